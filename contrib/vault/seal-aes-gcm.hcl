# Vault seal through p11gate with AES-GCM (CKM_AES_GCM, 0x1087): one AES-256 key seals.
# Check it before starting Vault:
#   p11gate doctor --vault-config /etc/vault.d/vault.hcl --app vault
seal "pkcs11" {
  # The .deb installs p11gate in /usr/lib/p11gate/; install.sh in $PREFIX/lib/p11gate/.
  lib         = "/usr/lib/p11gate/libp11gate.so"

  # The token, as p11gate shows it to this Vault (P11GATE_APP in the systemd drop-in).
  # Either its label, or its slot number as a decimal string (slot = "0").
  token_label = "vault"

  # The user PIN: from the service's environment (EnvironmentFile in the drop-in), never in
  # this file. file:///etc/vault.d/hsm-pin also works. VAULT_HSM_PIN, when set, overrides pin.
  pin         = "env://VAULT_HSM_PIN"

  mechanism   = "0x1087"
  key_label   = "vault-aes-key"

  # Rotation: set key_label to a new label and keep the old key on the token. Entries sealed
  # before Vault recorded labels are opened with default_key_label:
  # default_key_label = "vault-aes-key"

  # Vault creates the key (AES-256, not extractable) at first start when it is missing.
  generate_key = "true"
}
