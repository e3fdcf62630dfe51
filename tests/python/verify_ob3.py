"""Verifies Open Badges 3.0 credentials as an independent party would: joserfc (a JOSE
implementation from PyPI, not ours) checks the JWT signatures with the issuer's published
key set; the credential's status is read from the issuer's Bitstring Status List.

usage: verify_ob3.py <jwks.json> <credential.jwt> <status-list.jwt> <valid|revoked>
Prints the verified credential's id and status; exits non-zero on any failure.
"""
import base64
import gzip
import json
import sys

from joserfc import jws
from joserfc.jwk import KeySet

ALGORITHMS = ["EdDSA", "ES256"]


def verify(token: str, keys: KeySet) -> dict:
    obj = jws.deserialize_compact(token, keys, algorithms=ALGORITHMS)
    header = obj.protected
    assert header.get("typ") == "vc+jwt", header
    assert header.get("alg") in ALGORITHMS, header
    return json.loads(obj.payload)


def main() -> None:
    jwks_path, credential_path, status_path, expected = sys.argv[1:5]
    keys = KeySet.import_key_set(json.load(open(jwks_path)))
    credential = verify(open(credential_path).read().strip(), keys)

    # The shape of an OpenBadgeCredential (VC data model 2.0, OB 3.0 context).
    assert credential["@context"][0] == "https://www.w3.org/ns/credentials/v2", credential["@context"]
    assert any("purl.imsglobal.org/spec/ob/v3p0/context" in c for c in credential["@context"]), credential["@context"]
    assert credential["type"] == ["VerifiableCredential", "OpenBadgeCredential"], credential["type"]
    assert "Profile" in credential["issuer"]["type"] and credential["issuer"]["id"], credential["issuer"]
    subject = credential["credentialSubject"]
    assert "AchievementSubject" in subject["type"], subject
    achievement = subject["achievement"]
    assert "Achievement" in achievement["type"] and achievement["name"] and achievement["description"], achievement
    assert achievement["criteria"]["narrative"], achievement
    assert credential["validFrom"].endswith("Z"), credential["validFrom"]
    assert credential["iss"] == credential["issuer"]["id"] and credential["jti"] == credential["id"], credential
    assert credential["sub"] == subject["id"], credential

    # Its revocation status, from the status list the issuer signed.
    entry = credential["credentialStatus"]
    assert entry["type"] == "BitstringStatusListEntry" and entry["statusPurpose"] == "revocation", entry
    status_list = verify(open(status_path).read().strip(), keys)
    assert status_list["id"] == entry["statusListCredential"], (status_list["id"], entry)
    assert "BitstringStatusListCredential" in status_list["type"], status_list["type"]
    encoded = status_list["credentialSubject"]["encodedList"]
    assert encoded.startswith("u"), "multibase base64url"
    raw = encoded[1:]
    bits = gzip.decompress(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert len(bits) * 8 >= 131072, len(bits)
    index = int(entry["statusListIndex"])
    revoked = bool(bits[index // 8] & (0x80 >> (index % 8)))
    status = "revoked" if revoked else "valid"
    assert status == expected, f"{credential['id']} is {status}, expected {expected}"
    print(f"{credential['id']} {status}")


if __name__ == "__main__":
    main()
