# Sourced by the device-machine scripts (gpu_check.sh, gpu_profile.sh): unpack the carried
# .gl/ (EGL/GL loader debs) and .gpusite/ (cp312 packages the device image lacks, py-spy).
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json}
tar -C /tmp -xJf .gpusite/gpusite.tar.xz
rm -rf /tmp/site/envpool_assets /tmp/site/envpool_assets-*.dist-info
[ -f .gpusite/extra.tar.gz ] && tar -C /tmp -xzf .gpusite/extra.tar.gz
[ -f .gpusite/py-spy.xz ] && xz -dc .gpusite/py-spy.xz >/tmp/py-spy && chmod +x /tmp/py-spy
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
quiet() { grep -v -E "A.L.E|Stella"; }
