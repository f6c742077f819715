#!/usr/bin/env bash
# Add the bookworm-backports suite to the machine's existing apt sources.
#
# The mirror is whatever the machine already uses: this script finds the
# stanza (deb822) or line (one-line format) that carries the plain `bookworm`
# suite and adds `bookworm-backports` beside it, so no host name is written
# by this project. Idempotent: a second run changes nothing.
set -euo pipefail

has_backports() {
    grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null
}

if has_backports; then
    echo "apt-backports: bookworm-backports already configured"
    exit 0
fi

edited=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: a "Suites:" line that lists bookworm (the main archive, not security).
    if grep -qE '^Suites:.*(^|[[:space:]])bookworm([[:space:]]|$)' "$f"; then
        sed -i -E '/^Suites:/{/(^|[[:space:]])bookworm([[:space:]]|$)/s/$/ bookworm-backports/}' "$f"
        edited="$f"
        break
    fi
done

if [ -z "$edited" ] && [ -f /etc/apt/sources.list ]; then
    # One-line format: copy the first `deb URL bookworm main...` line with the suite changed.
    line=$(grep -E '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+bookworm[[:space:]]' /etc/apt/sources.list | head -n1 || true)
    if [ -n "$line" ]; then
        printf '%s\n' "$line" | sed -E 's/[[:space:]]bookworm[[:space:]]/ bookworm-backports /' >> /etc/apt/sources.list
        edited=/etc/apt/sources.list
    fi
fi

if [ -z "$edited" ]; then
    echo "apt-backports: no apt source for the bookworm suite found; add bookworm-backports by hand" >&2
    exit 1
fi
echo "apt-backports: added bookworm-backports to $edited"
