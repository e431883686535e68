#!/usr/bin/env bash
# Prepares, here (needs the network, apt-get and pip; any processor), the two ignored folders that
# gpu_setup.sh expects to be carried to the device machine (see ../.library/device/README.md):
#   .gl/       EGL/GL/Vulkan loader .debs (libglvnd), dpkg -x'd to / there
#   .gpusite/  gpusite.tar.xz: members site/<package files>, unpacked to /tmp/site (PYTHONPATH):
#                the cp312 x86-64 packages the device image lacks (envpool trimmed to Atari, SB3,
#                sb3-contrib, gymnasium, ale-py, moderngl, glcontext, glfw, av, dm-env, optree)
#              py-spy.xz: the py-spy binary (gpu_profile.sh)
# The device image already has python3.12, torch, numpy, opencv-python-headless, pillow, pyyaml, tqdm,
# psutil, pytest, matplotlib, cloudpickle, typing-extensions, absl-py, wrapt, attrs: not packed.
# ray is not packed (its cp312 wheel alone is 79 MB; the carried tree must stay under 64 MiB):
# gpu_check.sh skips its Ray case when `import ray` fails.
# Idempotent: a part already built by this version of the script is kept (FORCE=1 rebuilds all).
# Wheels are cached in $GPU_PACK_CACHE (default ~/.cache/gpurender-gpu-pack). PYTHON=... picks the
# interpreter whose pip downloads (default: .venv's, else python3); PY312=... a cp312 interpreter
# with numpy for the optional import check of the result (skipped when there is none).
# Usage: bash benchmarks/gpu_pack.sh   then   run(carry=[".gl", ".gpusite"], command="bash benchmarks/gpu_check.sh ...")
set -euo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT=$((64 * 1024 * 1024))  # the device tool's limit on what one call carries (tree + carried paths)

# Pins: the versions in .venv (Python 3.11), except envpool: .venv's 1.2.5 is the last for 3.11
# (pyproject.toml), the device's 3.12 takes 1.2.7, whose Atari ROMs come from envpool-assets 0.4.x.
PINS=(
  envpool==1.2.7 envpool-assets==0.4.1 dm-env==1.6 dm-tree==0.1.10 optree==0.20.0
  gymnasium==1.4.0 farama-notifications==0.0.6 ale-py==0.12.1
  stable-baselines3==2.9.2 sb3-contrib==2.9.2
  moderngl==5.13.0 glcontext==3.1.0 glfw==2.11.0 av==18.1.0
)
PYSPY=py-spy==0.4.3
DEBS=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# the device's python3 is CPython 3.12 (3.12.3) on x86-64
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
  --platform manylinux1_x86_64)

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CACHE=${GPU_PACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpurender-gpu-pack}
# a change to what builds the packs (this file down to its checks) rebuilds them
STAMP=$(sed '/^# --- check/q' "$SELF" | sha256sum | cut -c1-16)
[ "${FORCE:-0}" = 1 ] && rm -rf .gl .gpusite
mkdir -p .gl .gpusite "$CACHE/wheels"

# --- both folders ignored (.gitignore names them; older checkouts: .git/info/exclude) ---------
exclude=$(git rev-parse --git-path info/exclude)
for d in .gl .gpusite; do
  git check-ignore -q "$d/" || { mkdir -p "$(dirname "$exclude")" && echo "/$d/" >>"$exclude"; }
done

# --- .gl: the loader debs ------------------------------------------------------------------------
missing=()
for p in "${DEBS[@]}"; do compgen -G ".gl/${p}_*.deb" >/dev/null || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== .gl: apt-get download ${missing[*]}"
  lists=$(mktemp -d)
  mkdir -p "$lists/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
  apt-get "${o[@]}" update >/dev/null
  (cd .gl && apt-get "${o[@]}" download "${missing[@]}" 2>&1 | grep -v -e "unsandboxed as root" || true)
  rm -rf "$lists"
  for p in "${missing[@]}"; do compgen -G ".gl/${p}_*.deb" >/dev/null || { echo "no .gl/${p}_*.deb" >&2; exit 1; }; done
else
  echo "== .gl: all ${#DEBS[@]} debs present"
fi

# --- wheels ---------------------------------------------------------------------------------------
echo "== wheels -> $CACHE/wheels"
"$PYTHON" -m pip download -q --disable-pip-version-check --no-deps "${TARGET[@]}" -d "$CACHE/wheels" \
  "${PINS[@]}" "$PYSPY" 2>&1 | grep -v -e "^WARNING: Location" || true
wheel() {  # wheel NAME==VERSION -> the cached wheel's path (wheel files spell NAME with _)
  local n=${1%%==*} v=${1##*==}
  find "$CACHE/wheels" -maxdepth 1 -iname "${n//-/_}-$v-*.whl" | sort | head -1
}
for p in "${PINS[@]}" "$PYSPY"; do
  [ -n "$(wheel "$p")" ] || { echo "no wheel for $p in $CACHE/wheels" >&2; exit 1; }
done

# --- py-spy ----------------------------------------------------------------------------------------
if [ ! -s .gpusite/py-spy.xz ] || [ "$(cat .gpusite/py-spy.stamp 2>/dev/null)" != "$STAMP" ]; then
  echo "== .gpusite/py-spy.xz"
  unzip -p "$(wheel $PYSPY)" '*.data/scripts/py-spy' | xz -9 -T1 -c >.gpusite/py-spy.xz.part
  mv .gpusite/py-spy.xz.part .gpusite/py-spy.xz
  echo "$STAMP" >.gpusite/py-spy.stamp
fi

# --- the site tarball -----------------------------------------------------------------------------
if [ -s .gpusite/gpusite.tar.xz ] && [ "$(cat .gpusite/gpusite.stamp 2>/dev/null)" = "$STAMP" ]; then
  echo "== .gpusite/gpusite.tar.xz: built by this version of gpu_pack.sh already (FORCE=1 rebuilds)"
else
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  site=$tmp/site
  wheels=()
  for p in "${PINS[@]}"; do [[ $p == envpool-assets==* ]] || wheels+=("$(wheel "$p")"); done
  echo "== pip install --target (${#wheels[@]} wheels)"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-index --no-compile --no-cache-dir \
    --ignore-requires-python "${TARGET[@]}" --target "$site" "${wheels[@]}"

  echo "== trim"
  # envpool: the Atari family only. Its __init__ imports envpool.entry, which registers every
  # family: entry.py is rewritten to register Atari alone (gpurender's _import_envpool holds entry
  # out anyway). The Atari module needs nothing from envpool.libs (Qt for other families).
  ep=$site/envpool
  for f in "$ep"/*; do
    case ${f##*/} in __init__.py | entry.py | registration.py | python | atari) ;; *) rm -rf "$f" ;; esac
  done
  for n in $(readelf -d "$ep"/atari/*.so | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ ! -e "$site/envpool.libs/$n" ] || { echo "atari_envpool.so needs envpool.libs/$n" >&2; exit 1; }
  done
  rm -rf "$site/envpool.libs" "$site"/envpool-*.dist-info/licenses/qt6
  cat >"$ep/entry.py" <<'EOF'
"""Entry point for all envs' registration: trimmed by gpurender's benchmarks/gpu_pack.sh to Atari."""

import envpool.atari.registration  # noqa: F401
EOF
  # the ROMs: envpool/registration.py's asset_base_path takes envpool/atari/roms when it exists,
  # so the ~90 MB envpool_assets package (every family's assets) is not needed
  unzip -q "$(wheel envpool-assets==0.4.1)" 'envpool_assets/atari/roms/*' -d "$tmp/assets"
  mv "$tmp/assets/envpool_assets/atari/roms" "$ep/atari/roms"
  [ "$(find "$ep/atari/roms" -name '*.bin' | wc -l)" -gt 50 ] || { echo "no Atari ROMs" >&2; exit 1; }
  # what nothing imports at runtime
  rm -rf "$site/bin" "$site/moderngl-stubs" "$site"/*.dist-info/sboms
  find "$site" -depth -type d \( -name __pycache__ -o -name tests -o -name test \) -exec rm -rf {} +
  find "$site" -type f \( -name '*.pyi' -o -name '*.pxd' -o -name '*.pyx' -o -name '*.h' -o -name '*.c' \
    -o -name '*.cpp' -o -name py.typed \) -delete
  # debug info (av's Cython modules: 31 MB -> 5 MB); symbols and dynamic sections are kept
  while IFS= read -r -d '' f; do
    # (no `| grep -q` under pipefail: readelf's SIGPIPE would fail the test at random)
    if [[ $(readelf -S "$f" 2>/dev/null) == *.debug_info* ]]; then strip --strip-debug "$f"; fi
  done < <(find "$site" -type f -name '*.so*' -print0)
  du -sb "$site" | awk '{printf "   site/ unpacked: %.1f MB\n", $1 / 1e6}'

  echo "== tar | xz -9 (a minute or two)"
  tar -C "$tmp" --sort=name --owner=0 --group=0 --numeric-owner -cf - site | nice -n 10 xz -9 -T1 -c \
    >.gpusite/gpusite.tar.xz.part
  mv .gpusite/gpusite.tar.xz.part .gpusite/gpusite.tar.xz
  echo "$STAMP" >.gpusite/gpusite.stamp
  rm -rf "$tmp"
  trap - EXIT
fi

# --- check: the members are site/..., every package is there --------------------------------------
members=$(xz -dc .gpusite/gpusite.tar.xz | tar -tf -)
bad=$(grep -v -e '^site/' -e '^site$' <<<"$members" || true)
[ -z "$bad" ] || { echo "members outside site/: $(head -3 <<<"$bad")" >&2; exit 1; }
for pkg in envpool/atari/roms/pong.bin envpool/atari/atari_envpool.so ale_py/ av/ av.libs/ gymnasium/ \
  farama_notifications/ stable_baselines3/ sb3_contrib/ moderngl/ _moderngl.py glcontext/ glfw/ dm_env/ tree/ optree/; do
  grep -q -x -F "site/$pkg" <<<"$members" || { echo "site/$pkg missing from the tarball" >&2; exit 1; }
done
tops=$(cut -d/ -f2 <<<"$members" | grep -v -e '^$' -e '\.dist-info$' | sort -u | paste -sd,)
echo "== tarball: $(wc -l <<<"$members") members, site/{$tops}"

# optional: import everything with a cp312 interpreter that has numpy (the device's own packages)
PY312=${PY312:-python3.12}
if "$PY312" -c 'import sys, numpy; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  chk=$(mktemp -d)
  tar -C "$chk" -xJf .gpusite/gpusite.tar.xz
  echo "== import check with $("$PY312" -V) (PYTHONPATH=$chk/site)"
  PYTHONPATH=$chk/site "$PY312" - <<'EOF' || { rm -rf "$chk"; exit 1; }
import importlib
for m in ["envpool", "ale_py", "av", "gymnasium", "moderngl", "glcontext", "glfw", "dm_env", "tree", "optree"]:
    importlib.import_module(m)
import envpool
env = envpool.make_gymnasium("Pong-v5", num_envs=1, img_height=210, img_width=160, gray_scale=False, stack_num=1)
env.reset()
print("   imported; envpool", envpool.__version__, "made Pong-v5 with", len(envpool.list_all_envs()), "envs registered")
try:
    import torch  # noqa: F401
    import sb3_contrib, stable_baselines3  # noqa: F401, E401
    print("   stable_baselines3", stable_baselines3.__version__, "imported")
except Exception as exc:  # no torch here (the device has it)
    print("   stable_baselines3 not imported here:", type(exc).__name__, exc)
EOF
  rm -rf "$chk"
else
  echo "== no cp312 interpreter with numpy here (PY312=$PY312): import check skipped"
fi

# --- sizes ----------------------------------------------------------------------------------------
bytes() { xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
tracked=$(git ls-files -z | bytes)
untracked=$(git ls-files -z -o --exclude-standard | bytes)
shared=0
[ -d shared ] && shared=$(find shared -type f -print0 | bytes)
gl=$(find .gl -type f -print0 | bytes)
gs=$(find .gpusite -type f -print0 | bytes)
total=$((tracked + untracked + shared + gl + gs))
mb() { awk -v b="$1" 'BEGIN {printf "%6.2f MiB", b / 1048576}'; }
echo "== sizes"
printf '   %-24s %s  (%s debs)\n' .gl/ "$(mb "$gl")" "$(ls .gl | wc -l)"
for f in .gpusite/*.xz; do printf '   %-24s %s\n' "$f" "$(mb "$(stat -c %s "$f")")"; done
echo "   tracked tree             $(mb "$tracked")"
echo "   untracked, not ignored   $(mb "$untracked")"
[ "$shared" -gt 0 ] && echo "   shared/                  $(mb "$shared")"
echo "   one call carries         $(mb "$total") of $(mb "$LIMIT")"
[ "$total" -lt "$LIMIT" ] || { echo "over the device tool's 64 MiB limit" >&2; exit 1; }
echo "ok: run(carry=[\".gl\", \".gpusite\"], command=\"bash benchmarks/gpu_check.sh NAME\")  [$ROOT]"
