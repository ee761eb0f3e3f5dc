#!/usr/bin/env bash
# Build a Debian bookworm base OS image from a Debian package mirror with debootstrap, for
# machines that cannot pull `debian:bookworm-slim` from a registry (air-gapped networks, CI
# here). Optionally adds extra CA certificates (corporate TLS-inspecting proxies) to the image's
# trust store and points pip / requests / OpenSSL at the resulting bundle.
#
# Usage (as root):
#   docker/build_base_os.sh [--tag NAME:TAG] [--mirror URL] [--security-mirror URL]
#                           [--suite SUITE] [--ca-cert FILE.crt]... [--host-cas]
#
#   --tag              image to create (default: $OS_IMAGE or sagemaker-resnet50-os:bookworm)
#   --mirror           Debian mirror (default: first URIs: in /etc/apt/sources.list.d/debian.sources,
#                      else http://deb.debian.org/debian)
#   --security-mirror  security mirror written into the image's apt sources
#                      (default: http://deb.debian.org/debian-security)
#   --suite            Debian suite (default: bookworm)
#   --ca-cert FILE     add one PEM CA certificate (repeatable)
#   --host-cas         add every certificate in /usr/local/share/ca-certificates/ (the host's
#                      locally added CAs, i.e. what a TLS-inspecting proxy needs)
#
# Then build the project images on it:  docker build --build-arg BASE_IMAGE=<tag> ...
# Takes about 2 minutes and gives an image of about 120 MB (bookworm-slim is about 75 MB).
set -euo pipefail

TAG="${OS_IMAGE:-sagemaker-resnet50-os:bookworm}"
SUITE="bookworm"
MIRROR=""
SECURITY_MIRROR="http://deb.debian.org/debian-security"
CA_CERTS=()

die() { echo "build_base_os.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --security-mirror) SECURITY_MIRROR="$2"; shift 2 ;;
        --suite) SUITE="$2"; shift 2 ;;
        --ca-cert) [[ -f "$2" ]] || die "no such certificate: $2"; CA_CERTS+=("$2"); shift 2 ;;
        --host-cas)
            shopt -s nullglob
            for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
                CA_CERTS+=("$f")
            done
            shopt -u nullglob
            shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap)"
command -v docker >/dev/null || die "docker is not installed"

if [[ -z "$MIRROR" ]]; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi

WORK="$(mktemp -d /tmp/build-base-os.XXXXXX)"
cleanup() {
    # debootstrap may leave /proc or /sys mounted in the rootfs if it was interrupted.
    for m in proc sys dev/pts dev; do
        if mountpoint -q "$WORK/rootfs/$m" 2>/dev/null; then umount -l "$WORK/rootfs/$m" || true; fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
ROOTFS="$WORK/rootfs"

echo ">> debootstrap $SUITE from $MIRROR into $ROOTFS"
# ca-certificates: pip/requests need a trust store; the extra CAs are added to it below.
debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

# Same slimming as the official debian:*-slim images: no docs/man pages/locales from later
# installs, and apt drops downloaded .debs after each install.
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat >"$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends"

rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

CHANGES=()
if [[ ${#CA_CERTS[@]} -gt 0 ]]; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates/extra"
    for crt in "${CA_CERTS[@]}"; do
        echo ">> adding CA certificate $crt"
        base="$(basename "$crt")"
        cp "$crt" "$ROOTFS/usr/local/share/ca-certificates/extra/${base%.*}.crt"
    done
    chroot "$ROOTFS" /usr/sbin/update-ca-certificates >/dev/null
    # The CAs live in the trust store, so any later `update-ca-certificates` keeps them; these
    # variables make pip, requests and OpenSSL-based tools use that store.
    bundle=/etc/ssl/certs/ca-certificates.crt
    CHANGES+=(--change "ENV PIP_CERT=$bundle" --change "ENV REQUESTS_CA_BUNDLE=$bundle"
              --change "ENV SSL_CERT_FILE=$bundle" --change "ENV CURL_CA_BUNDLE=$bundle")
fi

# Leave nothing of the build behind: package lists, downloaded .debs, logs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
       "$ROOTFS"/usr/share/info/*
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"

echo ">> importing as $TAG"
tar --numeric-owner -C "$ROOTFS" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $SUITE $MIRROR" \
        "${CHANGES[@]}" - "$TAG" >/dev/null
docker image ls "$TAG"
