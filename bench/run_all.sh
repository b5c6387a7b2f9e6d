#!/bin/sh
# The protocol measurements in results/ (2-core CPU, loopback, one thread per party).
# Each step streams to its own directory and resumes if interrupted; rerun to finish.
set -e
cd "$(dirname "$0")/.."
. .venv/bin/activate
nice pmpc bench -q -o runs/bench-small                                   # tiny-random-llama, stories260K, all protocols
nice pmpc bench -q -m smollm2 -t 16 -o runs/bench-smollm2                 # SmolLM2-135M, one 16-token window
nice pmpc bench -q -m bert-base-random,gpt2-random -t 16 -o runs/bench-shapes  # paper-scale shapes, random weights
nice pmpc bench errors -q -m smollm2 -t 16 -w 2 -p iron,bolt,bumblebee,puma,nexus,mpcformer,crypten,exact \
    -o runs/errors-smollm2                                               # writes pmpc/presets/measured_errors.json
