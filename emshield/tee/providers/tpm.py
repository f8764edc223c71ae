"""`tpm` provider: the device secret sealed by a TPM 2.0 (tpm2-pytss), optionally bound to PCRs.

The secret is a TPM keyedhash *sealed data object* (fixedTPM, fixedParent) under an ECC P-256
primary storage key of the owner hierarchy, re-derived on each use from the TPM's owner seed. Only
the TPM-encrypted object blobs are stored (in the device record); they are useless without this
TPM. With `pcrs` (e.g. "sha256:0,7") the object's policy is TPM2_PolicyPCR over the PCR values at
creation time: after the boot chain changes, the TPM refuses to unseal. Create and unseal run in
sessions salted with the primary key with parameter encryption, so the secret does not cross the
TPM bus in clear.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from emshield.tee.devicekey import held_secret
from emshield.tee.errors import ProviderError, ProviderUnavailableError

DEFAULT_TCTI = "device:/dev/tpmrm0"
TCTI_ENV = "EMSHIELD_TPM_TCTI"
PRIMARY_TEMPLATE = "ecc256:aes128cfb"


def _tss():
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # ESAPI logs every TPM error to stderr otherwise
    try:
        import tpm2_pytss
        from tpm2_pytss import constants, types
    except ImportError as e:
        raise ProviderUnavailableError(
            f"tpm2-pytss is not installed or libtss2 is missing ({e}); install libtss2-dev and tpm2-pytss") from None
    return tpm2_pytss, constants, types


class TpmKeyProvider:
    name: ClassVar[str] = "tpm"

    def __init__(self, device_dir: Path, config: dict[str, Any]) -> None:
        unknown = set(config) - {"tcti", "pcrs", "sealed_public", "sealed_private"}
        if unknown:
            raise ProviderError(f"tpm provider: unknown settings {sorted(unknown)}")
        self.tcti = os.environ.get(TCTI_ENV) or config.get("tcti") or DEFAULT_TCTI
        self.pcrs: str = config.get("pcrs") or ""
        self.sealed_public: str | None = config.get("sealed_public")
        self.sealed_private: str | None = config.get("sealed_private")

    # -- connection -------------------------------------------------------------------------------
    @contextmanager
    def _esapi(self):
        tss, _, _ = _tss()
        try:
            tcti = tss.TCTILdr.parse(self.tcti)
            ectx = tss.ESAPI(tcti)
        except Exception as e:  # the TSS raises TSS2_Exception/RuntimeError with a code, not a class per cause
            raise ProviderUnavailableError(f"cannot reach a TPM through TCTI {self.tcti!r}: {e}") from None
        try:
            yield ectx
        finally:
            ectx.close()
            tcti.close()

    def available(self) -> tuple[bool, str]:
        try:
            with self._esapi() as ectx:
                ectx.get_random(1)
        except ProviderUnavailableError as e:
            return False, str(e)
        except Exception as e:
            return False, f"TPM at {self.tcti!r} does not answer: {e}"
        return True, ""

    def config(self) -> dict[str, Any]:
        return {"tcti": self.tcti, "pcrs": self.pcrs, "sealed_public": self.sealed_public,
                "sealed_private": self.sealed_private}

    # -- helpers ----------------------------------------------------------------------------------
    def _primary(self, ectx):
        handle, *_ = ectx.create_primary(None, PRIMARY_TEMPLATE)
        return handle

    def _session(self, ectx, primary, policy: bool, attrs: int):
        _, c, t = _tss()
        kind = c.TPM2_SE.POLICY if policy else c.TPM2_SE.HMAC
        sess = ectx.start_auth_session(primary, c.ESYS_TR.NONE, kind, t.TPMT_SYM_DEF.parse("aes128cfb"),
                                       c.TPM2_ALG.SHA256)
        ectx.trsess_set_attributes(sess, c.TPMA_SESSION.CONTINUESESSION | attrs)
        if policy:
            ectx.policy_pcr(sess, t.TPM2B_DIGEST(), t.TPML_PCR_SELECTION.parse(self.pcrs))
        return sess

    def _policy_digest(self, ectx):
        _, c, t = _tss()
        trial = ectx.start_auth_session(c.ESYS_TR.NONE, c.ESYS_TR.NONE, c.TPM2_SE.TRIAL,
                                        t.TPMT_SYM_DEF(algorithm=c.TPM2_ALG.NULL), c.TPM2_ALG.SHA256)
        try:
            ectx.policy_pcr(trial, t.TPM2B_DIGEST(), t.TPML_PCR_SELECTION.parse(self.pcrs))
            return ectx.policy_get_digest(trial)
        finally:
            ectx.flush_context(trial)

    # -- provider interface -----------------------------------------------------------------------
    def create(self, device_uuid: uuid.UUID, secret: bytearray) -> None:
        if self.sealed_public or self.sealed_private:
            raise ProviderError("this device already has a TPM-sealed key; refusing to replace it")
        _, c, t = _tss()
        with self._esapi() as ectx:
            try:
                primary = self._primary(ectx)
                attrs = c.TPMA_OBJECT.FIXEDTPM | c.TPMA_OBJECT.FIXEDPARENT
                policy = t.TPM2B_DIGEST()
                if self.pcrs:
                    policy = self._policy_digest(ectx)
                else:
                    attrs |= c.TPMA_OBJECT.USERWITHAUTH
                template = t.TPM2B_PUBLIC(t.TPMT_PUBLIC(
                    type=c.TPM2_ALG.KEYEDHASH, nameAlg=c.TPM2_ALG.SHA256, objectAttributes=attrs,
                    authPolicy=policy, parameters=t.TPMU_PUBLIC_PARMS(keyedHashDetail=t.TPMS_KEYEDHASH_PARMS(
                        scheme=t.TPMT_KEYEDHASH_SCHEME(scheme=c.TPM2_ALG.NULL)))))
                sensitive = t.TPM2B_SENSITIVE_CREATE(t.TPMS_SENSITIVE_CREATE(data=t.TPM2B_SENSITIVE_DATA(bytes(secret))))
                enc = self._session(ectx, primary, False, c.TPMA_SESSION.DECRYPT)
                try:
                    private, public, *_ = ectx.create(primary, sensitive, template, session2=enc)
                finally:
                    ectx.flush_context(enc)
                    ectx.flush_context(primary)
            except ProviderError:
                raise
            except Exception as e:
                raise ProviderError(f"TPM refused to seal the device key: {e}") from None
        self.sealed_public = public.marshal().hex()
        self.sealed_private = private.marshal().hex()

    @contextmanager
    def unlock(self) -> Iterator[bytearray]:
        if not (self.sealed_public and self.sealed_private):
            raise ProviderError("device record holds no TPM-sealed key")
        _, c, t = _tss()
        with self._esapi() as ectx:
            try:
                public, _ = t.TPM2B_PUBLIC.unmarshal(bytes.fromhex(self.sealed_public))
                private, _ = t.TPM2B_PRIVATE.unmarshal(bytes.fromhex(self.sealed_private))
                primary = self._primary(ectx)
                try:
                    obj = ectx.load(primary, private, public)
                    sess = self._session(ectx, primary, bool(self.pcrs), c.TPMA_SESSION.ENCRYPT)
                    try:
                        data = ectx.unseal(obj, session1=sess)
                    finally:
                        ectx.flush_context(sess)
                        ectx.flush_context(obj)
                finally:
                    ectx.flush_context(primary)
            except Exception as e:
                hint = " (PCR policy not satisfied: the platform state changed since the key was sealed)" \
                    if "policy" in str(e).lower() or "0x99d" in str(e).lower() else ""
                raise ProviderError(f"TPM refused to unseal the device key: {e}{hint}") from None
        with held_secret(bytearray(bytes(data)), "TPM object") as secret:
            yield secret

    def destroy(self) -> None:
        """Nothing lives inside the TPM (the object is loaded only while unsealing); forget the blobs."""
        self.sealed_public = self.sealed_private = None
