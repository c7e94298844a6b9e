#!/bin/sh
# Provision a Raspberry Pi (or any Debian-like board) as an edgeship device.
#
# On the device, as root:
#   sudo ./provision.sh --device-id pi-001 --fleet plant-a \
#       --broker mqtts://broker.lan:8883 --root-pub root.pub \
#       --password-file pi-001.password --ca ca.crt
#
# What it does, in order (each step printed as it runs; --dry-run prints and does nothing):
#   1. python3 venv in /opt/edgeship/venv with edgeship installed       (skip: --no-install)
#   2. system user "edgeship", no login shell                           (skip: --no-system)
#   3. /etc/edgeship/root.pub        the root public key, 0644 (refuses a private key)
#      /etc/edgeship/broker.password the device's broker password, 0640 root:edgeship
#      /etc/edgeship/ca.crt          the broker's CA (optional)
#      /etc/edgeship/agent.toml      agent.toml next to this script, with the ids filled in
#      /var/lib/edgeship/            the agent's data dir, 0750 edgeship:edgeship
#   4. the packaged systemd unit (agent/edgeship-agent.service) + raspberry-pi.conf drop-in
#   5. check agent.toml with the agent's own config loader
#   6. systemctl daemon-reload; systemctl enable --now edgeship-agent  (skip: --no-system)
#
# --root DIR lays the files out under DIR instead of / (a mounted SD-card image, or a
# staging dir); agent.toml still names the device's own paths. It implies --no-install
# and --no-system (software, users and services belong to the running device): finish
# on the device with `sudo ./provision.sh <same options>`.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=""
DRY_RUN=0
NO_INSTALL=0
NO_SYSTEM=0
DEVICE_ID=""
FLEET=""
BROKER=""
ROOT_PUB=""
PASSWORD_FILE=""
CA=""
SOURCE="edgeship"
VENV="/opt/edgeship/venv"
PYTHON=""

usage() {
    sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --device-id ID --fleet NAME --broker URL --root-pub FILE"
    echo "         [--password-file FILE] [--ca FILE] [--root DIR] [--source PIP-SPEC]"
    echo "         [--python PATH] [--dry-run] [--no-install] [--no-system]"
}

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --device-id) DEVICE_ID=${2:?}; shift 2 ;;
        --fleet) FLEET=${2:?}; shift 2 ;;
        --broker) BROKER=${2:?}; shift 2 ;;
        --root-pub) ROOT_PUB=${2:?}; shift 2 ;;
        --password-file) PASSWORD_FILE=${2:?}; shift 2 ;;
        --ca) CA=${2:?}; shift 2 ;;
        --root) ROOT=${2:?}; shift 2 ;;
        --source) SOURCE=${2:?}; shift 2 ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-install) NO_INSTALL=1; shift ;;
        --no-system) NO_SYSTEM=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# ---------------------------------------------------------------- check the inputs first
segment='^[A-Za-z0-9._-]\{1,64\}$'  # an MQTT topic level, as the agent's config demands
echo "$DEVICE_ID" | grep -q "$segment" || die "--device-id: 1-64 letters, digits, '.', '_' or '-'"
echo "$FLEET" | grep -q "$segment" || die "--fleet: 1-64 letters, digits, '.', '_' or '-'"
case "$BROKER" in
    mqtt://*|mqtts://*) ;;
    *) die "--broker: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]" ;;
esac
[ -f "$ROOT_PUB" ] || die "--root-pub: no such file: $ROOT_PUB"
head -n 1 "$ROOT_PUB" | grep -q '^-----BEGIN PUBLIC KEY-----$' \
    || die "--root-pub: $ROOT_PUB is not a PEM public key (edgeship keys init writes root.pub)"
if grep -q 'PRIVATE KEY' "$ROOT_PUB"; then
    die "--root-pub: $ROOT_PUB holds a PRIVATE key; a device gets root.pub only"
fi
[ -z "$PASSWORD_FILE" ] || [ -f "$PASSWORD_FILE" ] || die "--password-file: no such file"
[ -z "$CA" ] || [ -f "$CA" ] || die "--ca: no such file: $CA"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root: not a directory: $ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    NO_INSTALL=1
    NO_SYSTEM=1
fi

ETC="$ROOT/etc/edgeship"
DATA="$ROOT/var/lib/edgeship"
UNIT_DIR="$ROOT/etc/systemd/system"
if [ -z "$PYTHON" ]; then
    if [ -x "$VENV/bin/python" ] || [ "$NO_INSTALL" = 0 ]; then PYTHON="$VENV/bin/python"
    else PYTHON=python3; fi
fi

run() {  # print a step; do it unless --dry-run
    echo "+ $*"
    [ "$DRY_RUN" = 1 ] || "$@"
}

put() {  # put MODE SRC DEST: copy atomically (temp file in the same dir, then rename)
    echo "+ install -m $1 $2 $3"
    [ "$DRY_RUN" = 1 ] && return 0
    install -m "$1" "$2" "$3.tmp.$$"
    sync "$3.tmp.$$" 2>/dev/null || true
    mv -f "$3.tmp.$$" "$3"
}

owned() {  # true when files should be given to the edgeship user (or would be, in a dry run)
    [ "$NO_SYSTEM" = 0 ] && { [ "$DRY_RUN" = 1 ] || id edgeship >/dev/null 2>&1; }
}

# ---------------------------------------------------------------- 1. software
if [ "$NO_INSTALL" = 0 ]; then
    run python3 -m venv "$VENV"
    run "$VENV/bin/pip" install --upgrade pip
    run "$VENV/bin/pip" install "$SOURCE"
fi

# ---------------------------------------------------------------- 2. user
if [ "$NO_SYSTEM" = 0 ] && ! id edgeship >/dev/null 2>&1; then
    run useradd --system --home-dir /var/lib/edgeship --shell /usr/sbin/nologin edgeship
fi

# ---------------------------------------------------------------- 3. keys, credentials, config
run mkdir -p "$ETC" "$DATA" "$UNIT_DIR/edgeship-agent.service.d"
run chmod 0755 "$ETC"
run chmod 0750 "$DATA"
put 0644 "$ROOT_PUB" "$ETC/root.pub"
if [ -n "$PASSWORD_FILE" ]; then
    put 0640 "$PASSWORD_FILE" "$ETC/broker.password"
    if owned; then run chown root:edgeship "$ETC/broker.password"; fi
fi
[ -z "$CA" ] || put 0644 "$CA" "$ETC/ca.crt"
if owned; then run chown edgeship:edgeship "$DATA"; fi

password_path=""; [ -z "$PASSWORD_FILE" ] || password_path=/etc/edgeship/broker.password
ca_path=""; [ -z "$CA" ] || ca_path=/etc/edgeship/ca.crt
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
# only the [broker] section's keys are rewritten (the [fallback] section has a url too)
sed -e "s|^device_id = \"[^\"]*\"|device_id = \"$DEVICE_ID\"|" \
    -e "s|^fleet = \"[^\"]*\"|fleet = \"$FLEET\"|" \
    -e "/^\[broker\]/,/^\[/ s|^url = \"[^\"]*\"|url = \"$BROKER\"|" \
    -e "/^\[broker\]/,/^\[/ s|^username = \"[^\"]*\"|username = \"$DEVICE_ID\"|" \
    -e "/^\[broker\]/,/^\[/ s|^password_file = \"[^\"]*\"|password_file = \"$password_path\"|" \
    -e "/^\[broker\]/,/^\[/ s|^ca = \"[^\"]*\"|ca = \"$ca_path\"|" \
    "$HERE/agent.toml" > "$rendered"
put 0644 "$rendered" "$ETC/agent.toml"

# ---------------------------------------------------------------- 4. systemd unit
unit=$("$PYTHON" -c 'import pathlib, edgeship.agent as a
print(pathlib.Path(a.__file__).with_name("edgeship-agent.service"))' 2>/dev/null || true)
if [ -z "$unit" ] || [ ! -f "$unit" ]; then
    unit="$HERE/../../agent/edgeship-agent.service"  # running from an edgeship checkout
fi
if [ -f "$unit" ]; then
    put 0644 "$unit" "$UNIT_DIR/edgeship-agent.service"
elif [ "$DRY_RUN" = 1 ]; then
    echo "+ install -m 0644 <edgeship>/agent/edgeship-agent.service $UNIT_DIR/edgeship-agent.service"
else
    die "cannot find agent/edgeship-agent.service (is edgeship installed for $PYTHON?)"
fi
put 0644 "$HERE/raspberry-pi.conf" "$UNIT_DIR/edgeship-agent.service.d/raspberry-pi.conf"

# ---------------------------------------------------------------- 5. check the config
if [ "$DRY_RUN" = 0 ]; then
    "$PYTHON" -c 'import sys
from edgeship.agent._config import load_config
c = load_config(sys.argv[1])
print(f"agent.toml ok: device {c.device_id} in fleet {c.fleet}, broker {c.broker.url}")' \
        "$ETC/agent.toml" || die "the written agent.toml does not load"
fi

# ---------------------------------------------------------------- 6. start
if [ "$NO_SYSTEM" = 0 ]; then
    run systemctl daemon-reload
    run systemctl enable --now edgeship-agent
    echo "follow it: journalctl -u edgeship-agent -f;" \
         "ask it: curl -s http://127.0.0.1:8500/v2/health/ready"
fi
echo "provisioned $DEVICE_ID (fleet $FLEET) under ${ROOT:-/}$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing changed)')"
