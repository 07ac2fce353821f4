# Vault seal through p11gate with AES-CBC (CKM_AES_CBC, 0x1082; Vault pads) and an HMAC-SHA256
# key (CKM_SHA256_HMAC, 0x0251) that authenticates each sealed entry.
# Check it before starting Vault:
#   p11gate doctor --vault-config /etc/vault.d/vault.hcl --app vault
seal "pkcs11" {
  # The .deb installs p11gate in /usr/lib/p11gate/; install.sh in $PREFIX/lib/p11gate/.
  lib            = "/usr/lib/p11gate/libp11gate.so"

  # By slot number instead of label: slot = "0" (a decimal string, as p11gate numbers the
  # slots of this app).
  token_label    = "vault"

  # A literal PIN works, but anyone who can read this file then has it: prefer
  # pin = "env://VAULT_HSM_PIN". VAULT_HSM_PIN, when set, overrides this value.
  pin            = "CHANGE-ME"

  mechanism      = "0x1082"
  key_label      = "vault-cbc-key"
  # default_key_label = "vault-cbc-key"     # after a rotation: the key of older entries

  # CBC needs the HMAC key: a CKK_GENERIC_SECRET key (an AES key there makes C_SignInit fail
  # with CKR_KEY_TYPE_INCONSISTENT).
  hmac_key_label = "vault-hmac-key"
  hmac_mechanism = "0x0251"
  # hmac_default_key_label = "vault-hmac-key"

  # Vault creates both keys at first start when they are missing.
  generate_key   = "true"
}
