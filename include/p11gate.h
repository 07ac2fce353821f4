/*
 * p11gate.h - the C surface of libp11gate.so, the p11gate PKCS#11 gateway module.
 *
 * libp11gate.so is an ordinary PKCS#11 module. An application loads it (dlopen or link) exactly as
 * it would load a vendor module; p11gate forwards every call to one "upstream" vendor module (for
 * example SoftHSMv2) and adds auditing, per-application slot mapping and mechanism filtering on the
 * way. This header documents what the module exports and the behaviour that is specific to p11gate;
 * the PKCS#11 types, constants and the 68 version 2.40 prototypes come from the system's PKCS#11
 * header.
 *
 * Building against it
 * -------------------
 *   cc $(pkg-config --cflags p11-kit-1) -Iinclude app.c -ldl
 *
 * The PKCS#11 2.40 definitions are taken from <p11-kit/pkcs11.h> (Debian/Ubuntu: libp11-kit-dev,
 * Fedora: p11-kit-devel). That header predates PKCS#11 3.0 on many distributions (Debian 12 ships
 * p11-kit 0.24, whose header stops at 2.40), so this file declares the few 3.0 types and the 24
 * 3.0 entry points that p11gate exports whenever the included header lacks them. When a newer header
 * already provides them (it defines CKF_INTERFACE_FORK_SAFE), the declarations here are skipped.
 *
 * Exports
 * -------
 * libp11gate.so defines exactly 92 dynamic symbols, all of them PKCS#11 entry points (the list is
 * checked in as tests/exports.txt and compared with `nm -D` by tests/exports.rs):
 *   - the 68 functions of PKCS#11 2.40, and
 *   - the 24 functions added by PKCS#11 3.0: C_GetInterfaceList, C_GetInterface, C_LoginUser,
 *     C_SessionCancel and the message-based Encrypt/Decrypt/Sign/Verify families.
 * There are no global constructors: the module initialises itself lazily in C_GetFunctionList,
 * C_GetInterfaceList, C_GetInterface or C_Initialize.
 *
 * Function tables
 * ---------------
 * p11gate never hands out the upstream's function list or interface structures; every table a
 * caller receives is p11gate's own static, immutable table whose entries are p11gate's exports.
 */
#ifndef P11GATE_H
#define P11GATE_H 1

#include <p11-kit/pkcs11.h>

#if defined(__cplusplus)
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------------
 * Versions and identity
 * --------------------------------------------------------------------------------------------- */

/* Version of p11gate itself (the crate version). */
#define P11GATE_VERSION_MAJOR 0
#define P11GATE_VERSION_MINOR 1
#define P11GATE_VERSION_PATCH 0
#define P11GATE_VERSION_STRING "0.1.0"

/* C_GetInfo's manufacturerID: this string, padded with blanks to 32 bytes, never NUL terminated. */
#define P11GATE_MANUFACTURER_ID "p11gate"

/* The Cryptoki version of the list returned by C_GetFunctionList and reported by C_GetInfo. */
#define P11GATE_CRYPTOKI_VERSION_MAJOR 2
#define P11GATE_CRYPTOKI_VERSION_MINOR 40

/* The interface name used by C_GetInterfaceList / C_GetInterface for the standard interfaces. */
#define P11GATE_INTERFACE_NAME "PKCS 11"

/* ------------------------------------------------------------------------------------------------
 * Environment variables read by C_Initialize (documented names; values are not echoed to logs)
 * --------------------------------------------------------------------------------------------- */

/* Path of the TOML configuration file. Default: P11GATE_DEFAULT_CONFIG. A missing file is not an
 * error when the environment alone describes the setup (e.g. P11GATE_UPSTREAM is set). A file that
 * holds credentials and is readable by others is refused. */
#define P11GATE_ENV_CONFIG "P11GATE_CONFIG"
#define P11GATE_DEFAULT_CONFIG "/etc/p11gate/p11gate.toml"

/* Path of the one upstream (vendor) PKCS#11 module; overrides the configuration file. */
#define P11GATE_ENV_UPSTREAM "P11GATE_UPSTREAM"

/* Where diagnostics go: "stderr", "syslog", or the path of a file to append to. */
#define P11GATE_ENV_LOG "P11GATE_LOG"

/* Diagnostic verbosity: error | warn | info | debug | trace. */
#define P11GATE_ENV_LOG_LEVEL "P11GATE_LOG_LEVEL"

/* Name of the application this process is ([[app]] in the configuration; overrides default_app):
 * it sees only that app's virtual slots. Set it in each Vault server's service environment. */
#define P11GATE_ENV_APP "P11GATE_APP"

/* slow_call_warn_ms for every upstream: a call slower than this many milliseconds is logged at
 * warn level with its function and duration. */
#define P11GATE_ENV_SLOW_CALL_WARN_MS "P11GATE_SLOW_CALL_WARN_MS"

/* The audit trail's sinks, replacing the configuration's [audit] sinks: "off", or a comma-separated
 * list of "syslog", "syslog:/path/to/socket" and "file:/path/to/audit.jsonl". */
#define P11GATE_ENV_AUDIT "P11GATE_AUDIT"

/* The key file of the audit file's HMAC chain (overrides [audit] key_file). */
#define P11GATE_ENV_AUDIT_KEY "P11GATE_AUDIT_KEY"

/* Metrics for Prometheus (overriding [metrics]): "off", or the absolute path of node_exporter's
 * textfile collector directory, where each process writes p11gate-<app>-<pid>.prom; and the
 * seconds between two writes (1 to 3600, default 10). */
#define P11GATE_ENV_METRICS "P11GATE_METRICS"
#define P11GATE_ENV_METRICS_INTERVAL "P11GATE_METRICS_INTERVAL"

/* The built-in soft token, served when no upstream is configured: its number of slots (default
 * 1) and the directory holding one token<N> directory per slot (default $XDG_DATA_HOME/p11gate,
 * else ~/.local/share/p11gate). */
#define P11GATE_ENV_NUM_SLOTS "P11GATE_NUM_SLOTS"
#define P11GATE_ENV_HOME "P11GATE_HOME"

/* ------------------------------------------------------------------------------------------------
 * Return values for p11gate's own refusals
 *
 * p11gate defines no vendor-specific CKR_ codes. Return values of the upstream pass through
 * untouched; when p11gate itself refuses a call it uses the spec's codes below and logs the reason.
 * --------------------------------------------------------------------------------------------- */

/* C_Initialize: the upstream module cannot be loaded or lacks C_GetFunctionList, or the
 * configuration is invalid. The log then has a line containing "cannot load upstream <path>:". */
#define P11GATE_RV_UPSTREAM_UNAVAILABLE CKR_GENERAL_ERROR

/* Any call other than C_GetFunctionList, C_GetInterfaceList, C_GetInterface and C_Initialize made
 * before C_Initialize, after C_Finalize, or in a child process after fork() before that child has
 * called C_Initialize itself. */
#define P11GATE_RV_NOT_INITIALIZED CKR_CRYPTOKI_NOT_INITIALIZED

/* A NULL pointer where the spec requires one, a malformed CK_C_INITIALIZE_ARGS, a non-NULL
 * argument to C_Finalize, or an interface (name, version) that is not offered. The upstream never
 * sees such a call. */
#define P11GATE_RV_BAD_ARGUMENTS CKR_ARGUMENTS_BAD

/* A session handle p11gate did not hand out (or that was closed). */
#define P11GATE_RV_BAD_SESSION CKR_SESSION_HANDLE_INVALID

/* A mechanism that the policy filters out (C_GetMechanismInfo and every *Init / key generation). */
#define P11GATE_RV_MECHANISM_FILTERED CKR_MECHANISM_INVALID

/* A slot that is hidden from this application. */
#define P11GATE_RV_SLOT_HIDDEN CKR_SLOT_ID_INVALID

/* A configured virtual slot whose token (by label or serial) is not found on its upstream now. */
#define P11GATE_RV_TOKEN_MISSING CKR_TOKEN_NOT_PRESENT

/* require_non_extractable: a secret or private key whose template does not state
 * CKA_EXTRACTABLE=FALSE and CKA_SENSITIVE=TRUE, or an attribute change that would weaken one. */
#define P11GATE_RV_KEY_POLICY CKR_TEMPLATE_INCONSISTENT

/* read_only: a read-write session or an object-changing call. */
#define P11GATE_RV_READ_ONLY CKR_TOKEN_WRITE_PROTECTED

/* A slot whose upstream credential p11gate holds: the application's PIN does not match pin_hash
 * (the HSM is not asked, so its PIN counter is untouched). */
#define P11GATE_RV_APP_PIN_WRONG CKR_PIN_INCORRECT

/* An object handle handed out on another slot of the same upstream module (per argument:
 * CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID, CKR_WRAPPING_KEY_HANDLE_INVALID,
 * CKR_UNWRAPPING_KEY_HANDLE_INVALID). */
#define P11GATE_RV_FOREIGN_OBJECT CKR_OBJECT_HANDLE_INVALID

/* A PKCS#11 3.0 function called through an export when the upstream does not offer 3.0. */
#define P11GATE_RV_NOT_SUPPORTED CKR_FUNCTION_NOT_SUPPORTED

/* Any panic inside p11gate (caught at the boundary, logged; the host process is not aborted). */
#define P11GATE_RV_INTERNAL_ERROR CKR_GENERAL_ERROR

/* A template that gives values (C_CreateObject, C_CopyObject, C_SetAttributeValue,
 * C_FindObjectsInit, C_GenerateKey, C_GenerateKeyPair, C_UnwrapKey, C_DeriveKey) with a NULL
 * pValue and a non-zero ulValueLen. The upstream never sees it. */
#define P11GATE_RV_TEMPLATE_VALUE_NULL CKR_ATTRIBUTE_VALUE_INVALID

/* With [audit] on_failure = "deny": a call that would be audited, while an audit sink cannot be
 * written. The upstream never sees it; calls are admitted again once the sink works. */
#define P11GATE_RV_AUDIT_DOWN CKR_FUNCTION_FAILED

/* ------------------------------------------------------------------------------------------------
 * PKCS#11 3.0 declarations missing from a 2.40-only system header
 * --------------------------------------------------------------------------------------------- */
#ifndef CKF_INTERFACE_FORK_SAFE

/* CK_INTERFACE.flags: the function list can be used in a child process without re-initialising. */
#define CKF_INTERFACE_FORK_SAFE 0x00000001UL

/* C_EncryptMessageNext / C_DecryptMessageNext flags: this part is the last one of the message. */
#define CKF_END_OF_MESSAGE 0x00000001UL

/* C_SessionCancel flags name the operations to cancel. */
#define CKF_MESSAGE_ENCRYPT 0x00000002UL
#define CKF_MESSAGE_DECRYPT 0x00000004UL
#define CKF_MESSAGE_SIGN 0x00000008UL
#define CKF_MESSAGE_VERIFY 0x00000010UL

#define CKR_OPERATION_CANCEL_FAILED 0x00000202UL

/* One interface: a name ("PKCS 11" for the standard ones), a pointer to a function list whose
 * first member is a CK_VERSION telling which list layout it is, and CKF_INTERFACE_* flags. */
typedef struct CK_INTERFACE {
    CK_CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} CK_INTERFACE;
typedef CK_INTERFACE *CK_INTERFACE_PTR;
typedef CK_INTERFACE_PTR *CK_INTERFACE_PTR_PTR;

/* Prototypes and pointer types (CK_C_<name>) of the 3.0 additions. */
#define P11GATE_DECLARE_3_0(name, args) \
    typedef CK_RV (*CK_##name) args;    \
    CK_RV name args

P11GATE_DECLARE_3_0(C_GetInterfaceList, (CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount));
P11GATE_DECLARE_3_0(C_GetInterface, (CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags));
P11GATE_DECLARE_3_0(C_LoginUser, (CK_SESSION_HANDLE hSession, CK_USER_TYPE userType,
                                  CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                                  CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen));
P11GATE_DECLARE_3_0(C_SessionCancel, (CK_SESSION_HANDLE hSession, CK_FLAGS flags));

P11GATE_DECLARE_3_0(C_MessageEncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                           CK_OBJECT_HANDLE hKey));
P11GATE_DECLARE_3_0(C_EncryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                       CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pPlaintext,
                                       CK_ULONG ulPlaintextLen, CK_BYTE_PTR pCiphertext,
                                       CK_ULONG_PTR pulCiphertextLen));
P11GATE_DECLARE_3_0(C_EncryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                            CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                            CK_ULONG ulAssociatedDataLen));
P11GATE_DECLARE_3_0(C_EncryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                           CK_ULONG ulParameterLen, CK_BYTE_PTR pPlaintextPart,
                                           CK_ULONG ulPlaintextPartLen, CK_BYTE_PTR pCiphertextPart,
                                           CK_ULONG_PTR pulCiphertextPartLen, CK_FLAGS flags));
P11GATE_DECLARE_3_0(C_MessageEncryptFinal, (CK_SESSION_HANDLE hSession));

P11GATE_DECLARE_3_0(C_MessageDecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                           CK_OBJECT_HANDLE hKey));
P11GATE_DECLARE_3_0(C_DecryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                       CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                       CK_ULONG ulAssociatedDataLen, CK_BYTE_PTR pCiphertext,
                                       CK_ULONG ulCiphertextLen, CK_BYTE_PTR pPlaintext,
                                       CK_ULONG_PTR pulPlaintextLen));
P11GATE_DECLARE_3_0(C_DecryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                            CK_ULONG ulParameterLen, CK_BYTE_PTR pAssociatedData,
                                            CK_ULONG ulAssociatedDataLen));
P11GATE_DECLARE_3_0(C_DecryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                           CK_ULONG ulParameterLen, CK_BYTE_PTR pCiphertextPart,
                                           CK_ULONG ulCiphertextPartLen, CK_BYTE_PTR pPlaintextPart,
                                           CK_ULONG_PTR pulPlaintextPartLen, CK_FLAGS flags));
P11GATE_DECLARE_3_0(C_MessageDecryptFinal, (CK_SESSION_HANDLE hSession));

P11GATE_DECLARE_3_0(C_MessageSignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                        CK_OBJECT_HANDLE hKey));
P11GATE_DECLARE_3_0(C_SignMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                    CK_ULONG ulParameterLen, CK_BYTE_PTR pData, CK_ULONG ulDataLen,
                                    CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen));
P11GATE_DECLARE_3_0(C_SignMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                         CK_ULONG ulParameterLen));
P11GATE_DECLARE_3_0(C_SignMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                        CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                        CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                        CK_ULONG_PTR pulSignatureLen));
P11GATE_DECLARE_3_0(C_MessageSignFinal, (CK_SESSION_HANDLE hSession));

P11GATE_DECLARE_3_0(C_MessageVerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism,
                                          CK_OBJECT_HANDLE hKey));
P11GATE_DECLARE_3_0(C_VerifyMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                      CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                      CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                      CK_ULONG ulSignatureLen));
P11GATE_DECLARE_3_0(C_VerifyMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                           CK_ULONG ulParameterLen));
P11GATE_DECLARE_3_0(C_VerifyMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParameter,
                                          CK_ULONG ulParameterLen, CK_BYTE_PTR pData,
                                          CK_ULONG ulDataLen, CK_BYTE_PTR pSignature,
                                          CK_ULONG ulSignatureLen));
P11GATE_DECLARE_3_0(C_MessageVerifyFinal, (CK_SESSION_HANDLE hSession));

#undef P11GATE_DECLARE_3_0

/* The version 3.0 function list: the 2.40 list's members in the same order, then the 24 additions.
 * Its version member reads 3.0. */
typedef struct CK_FUNCTION_LIST_3_0 {
    CK_VERSION version;
    CK_C_Initialize C_Initialize;
    CK_C_Finalize C_Finalize;
    CK_C_GetInfo C_GetInfo;
    CK_C_GetFunctionList C_GetFunctionList;
    CK_C_GetSlotList C_GetSlotList;
    CK_C_GetSlotInfo C_GetSlotInfo;
    CK_C_GetTokenInfo C_GetTokenInfo;
    CK_C_GetMechanismList C_GetMechanismList;
    CK_C_GetMechanismInfo C_GetMechanismInfo;
    CK_C_InitToken C_InitToken;
    CK_C_InitPIN C_InitPIN;
    CK_C_SetPIN C_SetPIN;
    CK_C_OpenSession C_OpenSession;
    CK_C_CloseSession C_CloseSession;
    CK_C_CloseAllSessions C_CloseAllSessions;
    CK_C_GetSessionInfo C_GetSessionInfo;
    CK_C_GetOperationState C_GetOperationState;
    CK_C_SetOperationState C_SetOperationState;
    CK_C_Login C_Login;
    CK_C_Logout C_Logout;
    CK_C_CreateObject C_CreateObject;
    CK_C_CopyObject C_CopyObject;
    CK_C_DestroyObject C_DestroyObject;
    CK_C_GetObjectSize C_GetObjectSize;
    CK_C_GetAttributeValue C_GetAttributeValue;
    CK_C_SetAttributeValue C_SetAttributeValue;
    CK_C_FindObjectsInit C_FindObjectsInit;
    CK_C_FindObjects C_FindObjects;
    CK_C_FindObjectsFinal C_FindObjectsFinal;
    CK_C_EncryptInit C_EncryptInit;
    CK_C_Encrypt C_Encrypt;
    CK_C_EncryptUpdate C_EncryptUpdate;
    CK_C_EncryptFinal C_EncryptFinal;
    CK_C_DecryptInit C_DecryptInit;
    CK_C_Decrypt C_Decrypt;
    CK_C_DecryptUpdate C_DecryptUpdate;
    CK_C_DecryptFinal C_DecryptFinal;
    CK_C_DigestInit C_DigestInit;
    CK_C_Digest C_Digest;
    CK_C_DigestUpdate C_DigestUpdate;
    CK_C_DigestKey C_DigestKey;
    CK_C_DigestFinal C_DigestFinal;
    CK_C_SignInit C_SignInit;
    CK_C_Sign C_Sign;
    CK_C_SignUpdate C_SignUpdate;
    CK_C_SignFinal C_SignFinal;
    CK_C_SignRecoverInit C_SignRecoverInit;
    CK_C_SignRecover C_SignRecover;
    CK_C_VerifyInit C_VerifyInit;
    CK_C_Verify C_Verify;
    CK_C_VerifyUpdate C_VerifyUpdate;
    CK_C_VerifyFinal C_VerifyFinal;
    CK_C_VerifyRecoverInit C_VerifyRecoverInit;
    CK_C_VerifyRecover C_VerifyRecover;
    CK_C_DigestEncryptUpdate C_DigestEncryptUpdate;
    CK_C_DecryptDigestUpdate C_DecryptDigestUpdate;
    CK_C_SignEncryptUpdate C_SignEncryptUpdate;
    CK_C_DecryptVerifyUpdate C_DecryptVerifyUpdate;
    CK_C_GenerateKey C_GenerateKey;
    CK_C_GenerateKeyPair C_GenerateKeyPair;
    CK_C_WrapKey C_WrapKey;
    CK_C_UnwrapKey C_UnwrapKey;
    CK_C_DeriveKey C_DeriveKey;
    CK_C_SeedRandom C_SeedRandom;
    CK_C_GenerateRandom C_GenerateRandom;
    CK_C_GetFunctionStatus C_GetFunctionStatus;
    CK_C_CancelFunction C_CancelFunction;
    CK_C_WaitForSlotEvent C_WaitForSlotEvent;
    CK_C_GetInterfaceList C_GetInterfaceList;
    CK_C_GetInterface C_GetInterface;
    CK_C_LoginUser C_LoginUser;
    CK_C_SessionCancel C_SessionCancel;
    CK_C_MessageEncryptInit C_MessageEncryptInit;
    CK_C_EncryptMessage C_EncryptMessage;
    CK_C_EncryptMessageBegin C_EncryptMessageBegin;
    CK_C_EncryptMessageNext C_EncryptMessageNext;
    CK_C_MessageEncryptFinal C_MessageEncryptFinal;
    CK_C_MessageDecryptInit C_MessageDecryptInit;
    CK_C_DecryptMessage C_DecryptMessage;
    CK_C_DecryptMessageBegin C_DecryptMessageBegin;
    CK_C_DecryptMessageNext C_DecryptMessageNext;
    CK_C_MessageDecryptFinal C_MessageDecryptFinal;
    CK_C_MessageSignInit C_MessageSignInit;
    CK_C_SignMessage C_SignMessage;
    CK_C_SignMessageBegin C_SignMessageBegin;
    CK_C_SignMessageNext C_SignMessageNext;
    CK_C_MessageSignFinal C_MessageSignFinal;
    CK_C_MessageVerifyInit C_MessageVerifyInit;
    CK_C_VerifyMessage C_VerifyMessage;
    CK_C_VerifyMessageBegin C_VerifyMessageBegin;
    CK_C_VerifyMessageNext C_VerifyMessageNext;
    CK_C_MessageVerifyFinal C_MessageVerifyFinal;
} CK_FUNCTION_LIST_3_0;
typedef CK_FUNCTION_LIST_3_0 *CK_FUNCTION_LIST_3_0_PTR;
typedef CK_FUNCTION_LIST_3_0_PTR *CK_FUNCTION_LIST_3_0_PTR_PTR;

#endif /* CKF_INTERFACE_FORK_SAFE */

/* ------------------------------------------------------------------------------------------------
 * What the exports do, group by group (PKCS#11 2.40 chapter 5 and 3.0 chapter 5), and where
 * p11gate's behaviour goes beyond "forward to the upstream"
 *
 * Interfaces and function lists (C_GetFunctionList, C_GetInterfaceList, C_GetInterface)
 *   - Work before C_Initialize. C_GetFunctionList returns p11gate's own static 2.40 list
 *     (version 2.40); NULL → CKR_ARGUMENTS_BAD.
 *   - C_GetInterfaceList always offers "PKCS 11" 2.40. It also offers "PKCS 11" 3.0 only when the
 *     upstream module offers a 3.0 interface (SoftHSMv2 2.6 does not; OpenSC does). The usual
 *     two-call convention applies (NULL list → count; short list → CKR_BUFFER_TOO_SMALL);
 *     a NULL pulCount → CKR_ARGUMENTS_BAD.
 *   - C_GetInterface(NULL name, NULL version) returns the module's default interface. Asking for a
 *     name/version that is not offered, or a NULL ppInterface → CKR_ARGUMENTS_BAD.
 *
 * General purpose (C_Initialize, C_Finalize, C_GetInfo)
 *   - Before C_Initialize, every function other than the three above and C_Initialize returns
 *     CKR_CRYPTOKI_NOT_INITIALIZED. A second C_Initialize → CKR_CRYPTOKI_ALREADY_INITIALIZED.
 *     C_Finalize then C_Initialize works again.
 *   - C_Initialize accepts NULL, CKF_OS_LOCKING_OK, all four application mutex callbacks (with or
 *     without CKF_OS_LOCKING_OK) and CKF_LIBRARY_CANT_CREATE_OS_THREADS. Only some of the four
 *     callbacks set, or pReserved != NULL → CKR_ARGUMENTS_BAD. C_Finalize(non-NULL) →
 *     CKR_ARGUMENTS_BAD.
 *   - C_Initialize loads the upstream named by P11GATE_UPSTREAM or the configuration; when it
 *     cannot: CKR_GENERAL_ERROR and a log line "cannot load upstream <path>: <reason>".
 *   - C_GetInfo: cryptokiVersion 2.40, manufacturerID "p11gate" blank padded to 32 bytes.
 *   - fork(): in the child, every call returns CKR_CRYPTOKI_NOT_INITIALIZED until the child calls
 *     C_Initialize, which then works (sessions, login, crypto). The parent is not affected.
 *
 * Slot and token management (C_GetSlotList ... C_SetPIN, C_WaitForSlotEvent)
 *   - Slots are virtual: the ids an application sees are p11gate's, mapped to (backend, real slot);
 *     slots hidden from the application do not appear and answer CKR_SLOT_ID_INVALID.
 *   - C_GetMechanismList / C_GetMechanismInfo omit / refuse mechanisms the policy filters out.
 *
 * Session management (C_OpenSession ... C_Logout, C_LoginUser, C_SessionCancel)
 *   - Session handles are p11gate's; an unknown or closed handle → CKR_SESSION_HANDLE_INVALID.
 *   - NULL phSession, NULL pInfo, or a NULL PIN with a nonzero length → CKR_ARGUMENTS_BAD.
 *
 * Objects (C_CreateObject ... C_FindObjectsFinal)
 *   - Object handles are not remapped: they are the upstream's, valid within the session's backend.
 *
 * Cryptographic functions (Encrypt, Decrypt, Digest, Sign, Verify, dual-function, key management,
 * random number generation, and the 3.0 message-based functions)
 *   - Forwarded unchanged, except that a mechanism refused by the policy answers
 *     CKR_MECHANISM_INVALID before any backend sees it, and that output-length pointers the spec
 *     requires (e.g. C_Encrypt's pulEncryptedDataLen) must not be NULL (CKR_ARGUMENTS_BAD).
 *   - The 3.0-only exports answer CKR_FUNCTION_NOT_SUPPORTED when the upstream offers no 3.0
 *     interface.
 *
 * Legacy parallel functions (C_GetFunctionStatus, C_CancelFunction): forwarded; per the spec they
 *   normally return CKR_FUNCTION_NOT_PARALLEL.
 *
 * Every call that is security relevant (login, key use, object changes, refusals) produces one
 * audit record; PINs and key material never appear in logs or audit records.
 * --------------------------------------------------------------------------------------------- */

#if defined(__cplusplus)
}
#endif

#endif /* P11GATE_H */
