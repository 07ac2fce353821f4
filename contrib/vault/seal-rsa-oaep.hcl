# Vault seal through p11gate with RSA-OAEP (CKM_RSA_PKCS_OAEP, 0x0009): Vault encrypts with the
# public key and decrypts with the private key on the token.
# Check it before starting Vault:
#   p11gate doctor --vault-config /etc/vault.d/vault.hcl --app vault
seal "pkcs11" {
  # The .deb installs p11gate in /usr/lib/p11gate/; install.sh in $PREFIX/lib/p11gate/.
  lib           = "/usr/lib/p11gate/libp11gate.so"

  token_label   = "vault"                   # or: slot = "0"
  pin           = "env://VAULT_HSM_PIN"     # from the drop-in's EnvironmentFile

  mechanism     = "0x0009"
  # OAEP's hash and MGF1 hash (sha1, sha224, sha256, sha384, sha512; Vault's default sha256).
  # SoftHSMv2 2.6 (Debian 12) does OAEP with SHA-1 only and answers CKR_ARGUMENTS_BAD to
  # anything else: behind SoftHSMv2 set rsa_oaep_hash = "sha1". p11gate's built-in soft token
  # and most HSMs do SHA-256. `p11gate doctor` tries it and tells.
  rsa_oaep_hash = "sha256"

  key_label     = "vault-rsa-key"
  # default_key_label = "vault-rsa-key"     # after a rotation: the key pair of older entries

  # Vault creates an RSA-2048 key pair at first start when it is missing.
  generate_key  = "true"
}
