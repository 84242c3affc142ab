#!/bin/sh
# tools/screenshots.sh BUILD_DIR -- regenerates the README's dashboard
# screenshots (docs/img/dashboard-fleet.png, docs/img/dashboard-device.png)
# from the current web/ code: runs only the screenshots_for_the_readme case of
# tests/integration/test_09_browser (a real tenderd, six simulated devices and
# Debian's chromium), which also checks what they show, then copies its two
# screenshots from BUILD_DIR/tests/integration/screenshots/ into docs/img/.
# Look at them before committing.  Needs what the browser test needs
# (chromium, tests/browser/node_modules); exits non-zero if the test failed
# or was skipped.
set -eu
build=$(cd "${1:?usage: tools/screenshots.sh BUILD_DIR}" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
shots=$build/tests/integration/screenshots
make -C "$build" -s tenderd tender-sim tests/integration/test_09_browser >/dev/null
rm -f "$shots/readme-fleet.png" "$shots/readme-device.png"
TN_BUILDDIR=$build TN_SRCDIR=$top TN_BROWSER_TESTS=screenshots_for_the_readme \
  "$build/tests/integration/test_09_browser"
for f in fleet device; do
  test -s "$shots/readme-$f.png" || { echo "screenshots.sh: no $shots/readme-$f.png" >&2; exit 1; }
  cp "$shots/readme-$f.png" "$top/docs/img/dashboard-$f.png"
done
echo "updated docs/img/dashboard-fleet.png and docs/img/dashboard-device.png"
