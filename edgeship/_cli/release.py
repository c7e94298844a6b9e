"""``edgeship keys`` / ``release`` / ``verify``: thin click shells over edgeship.sdk.

Errors are raised as EdgeshipError subclasses; ``_cli/main.py`` prints them as one line
and exits 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from edgeship._cli._options import verbose_option
from edgeship._errors import ConfigError, InferenceError, InputError, MalformedError

_PASSPHRASE_HELP = "file holding the private-key passphrase (else $EDGESHIP_KEY_PASSPHRASE)"


def _passphrase(path: Path | None) -> bytes | None:
    from edgeship.sdk._fileio import read_head
    from edgeship.sdk.release._keydir import PASSPHRASE_ENV

    if path is not None:
        try:
            text = read_head(path, 4096)[:4096]
        except OSError as exc:
            raise ConfigError(f"--passphrase-file {path}: {exc.strerror}") from exc
        return text.rstrip(b"\r\n") or None
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


_passphrase_option = click.option(
    "--passphrase-file", type=click.Path(path_type=Path), default=None, help=_PASSPHRASE_HELP
)
_days_option = click.option(
    "--expires", "days", type=click.IntRange(1, 3650), default=365, show_default=True,
    help="days until the key set expires",
)


@click.group()
def keys() -> None:
    """Manage signing and encryption keys.

    Create, rotate and revoke the root and release keys (Ed25519); make encryption
    keys for devices (X25519, fleet-key).
    """


@keys.command("init")
@click.argument("keydir", type=click.Path(path_type=Path))
@_passphrase_option
@_days_option
@click.option("--force", is_flag=True, help="replace keys already in KEYDIR")
def keys_init(keydir: Path, passphrase_file: Path | None, days: int, force: bool) -> None:
    """Make a root key, a release key and a key set signed by the root in KEYDIR."""
    from edgeship.sdk.release._keydir import KeyDir

    kd = KeyDir(keydir)
    keyset = kd.init(passphrase=_passphrase(passphrase_file), days=days, force=force)
    release_id = next(iter(keyset.keys))
    click.echo(f"keys in {keydir}: release key {release_id[:16]}, key set v{keyset.version}; "
               f"devices trust {kd.root_pub}")


@keys.command("rotate")
@click.argument("keydir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_passphrase_option
@_days_option
@click.option("--revoke-old", is_flag=True, help="also revoke the previous release key")
def keys_rotate(keydir: Path, passphrase_file: Path | None, days: int, revoke_old: bool) -> None:
    """Replace the release key and re-sign the key set with a higher version."""
    from edgeship.sdk.release._keydir import KeyDir

    keyset = KeyDir(keydir).rotate(passphrase=_passphrase(passphrase_file),
                                   revoke_old=revoke_old, days=days)
    click.echo(f"new release key {next(iter(keyset.keys))[:16]}, key set v{keyset.version}"
               f" ({len(keyset.revoked)} revoked)")


@keys.command("revoke")
@click.argument("keydir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("keyid", required=False)
@_passphrase_option
@_days_option
def keys_revoke(keydir: Path, keyid: str | None, passphrase_file: Path | None, days: int) -> None:
    """Revoke KEYID (default: the current release key, which is then replaced)."""
    from edgeship.sdk.release._keydir import KeyDir

    keyset = KeyDir(keydir).revoke(keyid, passphrase=_passphrase(passphrase_file), days=days)
    click.echo(f"revoked {keyset.revoked[-1][:16]}, key set v{keyset.version}")


# KEYDIR's own files (sdk/release/_keydir.py): root/release signing keys, the host's archive key
_KEYDIR_NAMES = frozenset({"root", "release", "archive", "keyset"})


@keys.command("fleet-key")
@click.argument("keydir", type=click.Path(path_type=Path))
@click.option("--name", default="fleet", show_default=True,
              help="file stem: one fleet key, or one per device (dev-001)")
@click.option("--force", is_flag=True, help="replace a key of that name (devices holding the "
              "old one can no longer decrypt new releases)")
def keys_fleet_key(keydir: Path, name: str, force: bool) -> None:
    """Make an X25519 encryption key pair.

    Writes KEYDIR/NAME.key (private, 0600) and KEYDIR/NAME.pub. NAME.pub is what 'edgeship release --encrypt-for' takes; NAME.key goes to the
    device(s) (agent.toml [encryption]) and nowhere else.
    """
    from edgeship.sdk.release._crypt import write_key_pair

    if name.lower() in _KEYDIR_NAMES:  # --force would destroy a signing or archive key
        raise InputError(f"--name {name}: that name belongs to the key dir's own keys "
                         f"({', '.join(sorted(_KEYDIR_NAMES))}); choose another")
    key_path, pub_path, keyid = write_key_pair(keydir, name, force=force)
    click.echo(f"encryption key {keyid[:16]}: {key_path} (private, 0600), {pub_path} "
               "(for release --encrypt-for)")


class _ReleaseCommand(click.Command):
    """``release ARTIFACT ...`` that also answers ``release bundle RELDIR -o FILE.esb``."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        if args[:1] == ["bundle"]:
            return bundle.make_context("release bundle", args[1:], parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@click.command(cls=_ReleaseCommand, epilog="edgeship release bundle RELDIR -o FILE.esb: one "
               "file for an offline device (see `edgeship release bundle --help`).")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--version", "version", required=True, help="semver X.Y.Z, newer than every base")
@click.option("--keys", "keydir", required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path))
@click.option("--base", "bases", multiple=True, type=click.Path(path_type=Path),
              help="earlier release dir to make a delta from (repeatable)")
@click.option("--golden", type=click.Path(path_type=Path), default=None,
              help="GOLDEN.npz: input(s), 'output', optional 'atol'")
@click.option("--golden-from", "golden_from", type=click.Path(path_type=Path), default=None,
              help="DATA.npz (e.g. the eval set): its first sample, run through ARTIFACT "
              "here, becomes the golden input and output")
@click.option("--expires", "expires_days", type=click.IntRange(1, 3650), default=90,
              show_default=True, help="days until the manifest expires")
@click.option("--model-name", default=None, help="default: the artifact name before its first dot")
@click.option("--hardware", default="", help="comma-separated hardware targets (default: any)")
@click.option("--variant", "variants", multiple=True, metavar="TARGET=FILE",
              help="the artifact compiled for a hardware target (e.g. ethos-u55-128="
              "OUT/model.int8.ethos-u55-128.tflite; for openvino-* an IR's .xml, packed with "
              "the .bin beside it into one .ovir): devices of that hardware install it, "
              "others ARTIFACT (repeatable)")
@click.option("--encrypt-for", "encrypt_for", multiple=True, type=click.Path(path_type=Path),
              help="X25519 public key (keys fleet-key) to encrypt for (repeatable)")
@click.option("--profile", "profile_file", type=click.Path(path_type=Path), default=None,
              help="drift reference: profile.json or DATA.npz (run through ARTIFACT)")
@_passphrase_option
@click.option("--force", is_flag=True, help="overwrite a release already in --out")
@click.option("--any-file", is_flag=True,
              help="sign ARTIFACT even if no runtime here loads it (a deliberate non-model "
              "payload)")
@verbose_option
def release(artifact: Path, version: str, keydir: Path, out: Path, bases: tuple[Path, ...],
            golden: Path | None, golden_from: Path | None, expires_days: int, model_name: str | None, hardware: str,
            variants: tuple[str, ...], encrypt_for: tuple[Path, ...], profile_file: Path | None,
            passphrase_file: Path | None, force: bool, any_file: bool) -> None:
    """Sign ARTIFACT as release VERSION in --out, with one delta per --base.

    With --encrypt-for, the artifact and deltas are stored AES-256-GCM encrypted under a
    fresh data key wrapped for each key given and for KEYS/archive.key (made on first
    use, never leaves this host): that is how a later --base of an encrypted release is
    opened here without any device's key. Deltas are computed on plaintext.

    ARTIFACT must load in onnxruntime (.onnx) or LiteRT (.tflite) here, as devices will
    load it (an Edge TPU model is checked by its structure); --any-file signs any file.
    A --variant needs its NPU to run: it is checked by its format and structure.
    """
    from edgeship.sdk.release._artifact import load_problem
    from edgeship.sdk.release._release import MAX_ARTIFACT_SIZE, Release, read_bounded
    from edgeship.sdk.release._variants import parse_variant

    by_target = dict(parse_variant(v) for v in variants)
    if len(by_target) != len(variants):
        raise InputError("--variant: a target is given twice")

    data = read_bounded(artifact, MAX_ARTIFACT_SIZE, "artifact")
    if not data:
        raise InputError(f"artifact {artifact} is empty")
    problem = "" if any_file else load_problem(artifact, data)
    if problem:  # before anything is written: devices would download it and roll back
        raise InputError(f"{problem}; devices could not run it (--any-file signs it anyway)")
    profile = None
    if profile_file is not None:  # on the plaintext artifact, before it is encrypted
        from edgeship.sdk.monitor._profile import profile_from_file

        try:
            profile = profile_from_file(profile_file, model_path=artifact)
        except (MalformedError, InferenceError) as exc:  # a broken profile.json, or data
            # that does not fit ARTIFACT: the user's input here, and it names the file
            raise InputError(f"--profile {profile_file}: {exc}") from exc
    if golden is not None and golden_from is not None:
        raise InputError("give --golden or --golden-from, not both")
    with tempfile.TemporaryDirectory(prefix="edgeship-golden-") as tmp:
        if golden_from is not None:
            from edgeship.sdk.release._golden import write_golden_from

            golden = Path(tmp) / "golden.npz"
            write_golden_from(golden_from, artifact, golden)
        rel = Release.build(
            artifact, version=version, keydir=keydir, out=out, bases=bases, golden=golden,
            expires_days=expires_days, model_name=model_name,
            hardware=[h for h in hardware.split(",") if h],
            passphrase=_passphrase(passphrase_file), force=force, encrypt_for=encrypt_for,
            profile=profile, variants=by_target,
        )
    m = rel.manifest
    deltas = ", ".join(f"{d.base_version}->{d.format} {d.size} B" for d in m.deltas) or "none"
    extra = ""
    if m.encryption is not None:
        extra += f"; encrypted for {len(m.encryption.recipients) - 1} key(s) + archive"
    if m.profile is not None:
        extra += "; drift profile"
    if m.golden is not None:
        extra += f"; golden check (atol {m.golden.atol:.3g})"
    for target, info in sorted(m.variants.items()):
        extra += f"; {target}: {info.name} {info.size} B"
    click.echo(f"release {m.model} {m.version} in {out}: {m.artifact.name} {m.artifact.size} B; "
               f"deltas: {deltas}{extra}")


@click.command()
@click.argument("reldir", type=click.Path(path_type=Path))
@click.option("--root", "root", required=True, type=click.Path(path_type=Path),
              help="root.pub, the key devices trust")
@click.option("--model-name", default=None, help="also require this model name")
@click.option("--hardware", default=None, help="also require this hardware target to match")
@click.option("--base", "bases", multiple=True, type=click.Path(path_type=Path),
              help="earlier release dir: apply its delta and check the result")
@click.option("--golden/--no-golden", default=True, show_default=True,
              help="run the artifact on the manifest's golden input, as the device will")
@click.option("--key", "key_file", type=click.Path(path_type=Path), default=None,
              help="X25519 private key of a recipient: also decrypt (in memory) and check")
@verbose_option
def verify(reldir: Path, root: Path, model_name: str | None, hardware: str | None,
           bases: tuple[Path, ...], golden: bool, key_file: Path | None) -> None:
    """Check RELDIR as a device would; print one line, exit 0 if trusted, 2 if not.

    An encrypted release is checked up to its signature and digests without --key;
    with --key it is also decrypted, its deltas applied and its golden check run.
    """
    from edgeship.sdk.release._release import verify_release

    key = None
    if key_file is not None:
        from edgeship.sdk.release._crypt import private_key_file

        key = private_key_file(key_file, "--key")
    m = verify_release(reldir, root, model_name=model_name, hardware=hardware, bases=bases,
                       golden=golden, private_key=key)
    note = ""
    if m.encryption is not None:
        note = (f"; encrypted for {len(m.encryption.recipients)} key(s), " +
                ("decrypted with --key" if key is not None else "not decrypted (no --key)"))
    click.echo(f"ok: {m.model} {m.version} {m.artifact.name} ({m.artifact.size} B, "
               f"{len(m.deltas)} deltas) signed by {m.keyid[:16]}, expires {m.expires}{note}")


@click.command("bundle")
@click.argument("reldir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the bundle file to write (FILE.esb)")
@click.option("--from", "bases", multiple=True, metavar="VERSION",
              help="carry only the delta from VERSION (repeatable; default: every delta)")
@click.option("--no-artifact", is_flag=True,
              help="leave the full artifact out (only devices on a --from version can "
                   "install it)")
def bundle(reldir: Path, out: Path, bases: tuple[str, ...], no_artifact: bool) -> None:
    """Write the release in RELDIR as one file for an offline device: its signed manifest
    and key set, the artifact and/or deltas. Install it with `edgeship agent install`."""
    from edgeship.sdk.release._bundle import write_bundle
    from edgeship.sdk.release._release import self_check

    self_check(reldir)  # a tampered release is refused here, not by every device
    made = write_bundle(reldir, out, bases=list(bases) or None, artifact=not no_artifact)
    size = out.stat().st_size
    click.echo(f"wrote {out} ({made.model} {made.version}, {len(made.files)} file(s), "
               f"{size} bytes)")
