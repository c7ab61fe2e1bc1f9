# Source on the device box before a benchmark: `. bench/device_setup.sh`.
#
# The box has torch and transformers but not diffusers, PyAV, bitsandbytes, whisper or an ffmpeg binary,
# and reaches no registry, so they travel in ignored folders named in the call's `carry` (64 MiB a call):
#   .whl/   wheels (diffusers, pydantic, PyAV, tenacity, ...) and bnb.tgz (bitsandbytes cut to its CUDA 13 library)
#   .whl2/  openai-whisper and more-itertools wheels, ffmpeg.xz (imageio-ffmpeg's static binary, xz-compressed)
# Both do not fit in one call, so each is installed into .dev/ (ignored, kept while the box stays warm):
# a call carrying .whl, then a call carrying .whl2, and every later call finds both installed.
set -e
mkdir -p .dev/site
for dir in .whl .whl2; do
    if ls "$dir"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .dev/site "$dir"/*.whl
    fi
done
if [ -f .whl/bnb.tgz ]; then tar xzf .whl/bnb.tgz -C .dev/site; fi
if [ -f .whl2/ffmpeg.xz ] && [ ! -x .dev/ffmpeg ]; then xz -dc .whl2/ffmpeg.xz > .dev/ffmpeg && chmod +x .dev/ffmpeg; fi
set +e
export PYTHONPATH="$PWD/.dev/site:$PWD" PYTHONUNBUFFERED=1
if [ -x .dev/ffmpeg ]; then export STORYBOARD_FFMPEG="$PWD/.dev/ffmpeg"; fi
python3 - <<'EOF'
import importlib.util, os
have = {name: importlib.util.find_spec(name) is not None for name in ("diffusers", "av", "bitsandbytes", "whisper", "pydantic")}
print("device setup:", have, "ffmpeg:", os.environ.get("STORYBOARD_FFMPEG", "none"))
EOF
