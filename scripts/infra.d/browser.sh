# shellcheck shell=bash
# A real browser for the dashboard tests: Debian's chromium, driven by playwright-core from npm.
# Only the library is installed (`npx playwright install` downloads browsers from a CDN, which is
# unreachable here); playwright-core launches /usr/bin/chromium through `executablePath`.
# Nothing runs: "up" means chromium starts headless and the pinned playwright-core is in
# cache/browser/node_modules.
#
#   UMP_CHROMIUM     the chromium binary
#   UMP_PLAYWRIGHT   the playwright-core package folder (`require(process.env.UMP_PLAYWRIGHT)`)
#   UMP_NODE         the node binary that runs the test scripts
#
# Launch it headless with --no-sandbox --disable-gpu --disable-quic --no-first-run
# --disable-background-networking --disable-component-update --disable-sync and a fresh
# --user-data-dir: without the network flags chromium keeps calling Google's services.

# 1.61 is the newest release that still runs on Debian 12's Node.js 18.
BROWSER_PLAYWRIGHT_VERSION=1.61.1
BROWSER_CHROMIUM=/usr/bin/chromium

browser__dir() { echo "$UMP_INFRA_CACHE/browser"; }

browser__node_ok() {
  command -v node >/dev/null 2>&1 && [ "$(node -e 'process.stdout.write(String(process.versions.node.split(".")[0] >= 18))' 2>/dev/null)" = true ]
}

browser__playwright_ok() {
  [ "$(node -e "process.stdout.write(require('$(browser__dir)/node_modules/playwright-core/package.json').version)" 2>/dev/null || true)" = "$BROWSER_PLAYWRIGHT_VERSION" ]
}

browser_up() {
  local dir profile dom
  # Without font packages (recommends are not installed) every glyph renders as a box; Nanum
  # covers Hangul (recipients' messages, AlimTalk templates) in the screenshots.
  apt_install chromium fonts-liberation fonts-nanum
  browser__node_ok || apt_install nodejs npm
  browser__node_ok || die "browser: Node.js 18 or newer is required (found $(node --version 2>/dev/null || echo none))"
  dir=$(browser__dir)
  if ! browser__playwright_ok; then
    command -v npm >/dev/null 2>&1 || apt_install npm
    log "browser: installing playwright-core $BROWSER_PLAYWRIGHT_VERSION into $dir"
    mkdir -p "$dir"
    printf '{"name":"ump-browser-tests","private":true,"dependencies":{"playwright-core":"%s"}}\n' \
      "$BROWSER_PLAYWRIGHT_VERSION" >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error >"$dir/npm.log" 2>&1) \
      || { cat "$dir/npm.log" >&2; die "browser: npm install playwright-core@$BROWSER_PLAYWRIGHT_VERSION failed"; }
    browser__playwright_ok || die "browser: playwright-core $BROWSER_PLAYWRIGHT_VERSION is not in $dir/node_modules after npm install"
  fi
  # A real start, not just --version: a missing shared library only shows up here.
  profile=$(mktemp -d)
  dom=$(timeout 60 "$BROWSER_CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --dump-dom 'data:text/html,<p id=ok>ok</p>' 2>"$dir/chromium-check.log" || true)
  rm -rf "$profile"
  [[ $dom == *'<p id="ok">ok</p>'* ]] \
    || { cat "$dir/chromium-check.log" >&2; die "browser: $BROWSER_CHROMIUM cannot render a page headless"; }
}

browser_down() { :; }

browser_status() {
  [ -x "$BROWSER_CHROMIUM" ] && browser__node_ok && browser__playwright_ok
}

browser_env() {
  echo "UMP_CHROMIUM=$BROWSER_CHROMIUM"
  echo "UMP_PLAYWRIGHT=$(browser__dir)/node_modules/playwright-core"
  echo "UMP_NODE=$(command -v node || echo node)"
}
