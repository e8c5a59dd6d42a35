from services.inference.backends.stop_sequences import StopSequenceMatcher


def feed_all(matcher: StopSequenceMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_sequence_split_across_pieces_is_never_emitted() -> None:
    assert feed_all(StopSequenceMatcher(["<end_of_turn>"]), ["Hello", " <end", "_of_", "turn>", "more"]) == (
        "Hello ",
        True,
    )


def test_partial_match_that_diverges_is_released() -> None:
    matcher = StopSequenceMatcher(["STOP"])
    assert matcher.feed("ST") == ("", False)
    assert matcher.feed("ay") == ("STay", False)


def test_held_text_is_flushed_at_the_end() -> None:
    assert feed_all(StopSequenceMatcher(["###"]), ["a#", "#"]) == ("a##", False)


def test_earliest_of_several_stop_sequences_wins() -> None:
    assert feed_all(StopSequenceMatcher(["b", "a"]), ["xxab"]) == ("xx", True)


def test_no_stop_sequences_pass_everything() -> None:
    assert StopSequenceMatcher([]).feed("abc") == ("abc", False)
