"""Coverage-guided fuzzing of the frame decoder and the search answers (atheris).

    make fuzz                      # FUZZ_SECONDS=60 by default
    .venv/bin/python fuzz/fuzz_decoder.py -max_total_time=60 fuzz/corpus fuzz/seeds

The target is ``decoder_target.check``: the first input byte picks the piece
size the stream is fed in, the rest is the stream. Any exception other than
the typed RemoteProtocolError is a finding: copy the crashing input into
fuzz/regressions/ and tests/test_fuzz_regressions.py replays it on every
`make test`.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from decoder_target import check


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
