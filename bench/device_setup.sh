# Source on the device box before a benchmark: `. bench/device_setup.sh`.
#
# The box has torch and transformers but not diffusers, PyAV, bitsandbytes, whisper or an ffmpeg binary,
# and reaches no registry, so they travel in ignored folders named in the call's `carry` (64 MiB a call):
#   .whl/   wheels (diffusers, pydantic, PyAV, tenacity, ...) and bnb.tgz (bitsandbytes cut to its CUDA 13 library)
#   .whl2/  openai-whisper and more-itertools wheels, ffmpeg.xz (imageio-ffmpeg's static binary, xz-compressed),
#           fonts/ (DejaVu: the box has no fontconfig fonts and the Noto font packages are not carried)
# Both do not fit in one call, so each is installed into /tmp/sbdev (kept while the box stays warm):
# a call carrying .whl, then a call carrying .whl2, and every later call finds both installed.
set -e
DEV=/tmp/sbdev  # outside the repo copy: ignored folders there do not survive between calls
mkdir -p $DEV
for dir in .whl .whl2; do  # one target each: pip --target --upgrade would drop what the other call installed
    if ls "$dir"/*.whl >/dev/null 2>&1; then
        mkdir -p "$DEV/site$dir"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$DEV/site$dir" "$dir"/*.whl
    fi
done
if [ -f .whl/bnb.tgz ]; then tar xzf .whl/bnb.tgz -C $DEV/site.whl; fi
if [ -f .whl2/ffmpeg.xz ] && [ ! -x $DEV/ffmpeg ]; then xz -dc .whl2/ffmpeg.xz > $DEV/ffmpeg && chmod +x $DEV/ffmpeg; fi
if [ -d .whl2/fonts ]; then mkdir -p $DEV/fonts && cp .whl2/fonts/* $DEV/fonts/; fi
if [ -d $DEV/fonts ]; then cp $DEV/fonts/* assets/fonts/; fi  # the render's shipped-fonts folder, this copy only
set +e
export PYTHONPATH="$DEV/site.whl:$DEV/site.whl2:$PWD" PYTHONUNBUFFERED=1
if [ -x $DEV/ffmpeg ]; then export STORYBOARD_FFMPEG="$DEV/ffmpeg"; fi
python3 - <<'EOF'
import importlib.util, os
have = {name: importlib.util.find_spec(name) is not None for name in ("diffusers", "av", "bitsandbytes", "whisper", "pydantic")}
print("device setup:", have, "ffmpeg:", os.environ.get("STORYBOARD_FFMPEG", "none"))
EOF
