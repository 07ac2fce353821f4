/*
 * threads.c - many application threads inside one PKCS#11 module at once: the concurrency program
 * that tests/memcheck.rs runs under valgrind (it runs natively there too).
 *
 * usage: threads [-t THREADS] [-i ITERATIONS] [-r ROUNDS] [-T RV] -l LABEL [-p PIN] MODULE.so
 *        (defaults: 4 threads, 3 iterations, 2 rounds; PIN default: $P11_USER_PIN)
 *   -T RV  what C_Decrypt answers for an AES-GCM tag that does not verify (default 0x40,
 *          CKR_ENCRYPTED_DATA_INVALID, as the spec says; SoftHSMv2 2.6 answers 0x5,
 *          CKR_GENERAL_ERROR, and p11gate passes its upstream's answer through)
 *
 * Each round initialises the module (even rounds with the application's mutex callbacks and
 * flags 0, odd rounds with CKF_OS_LOCKING_OK), logs in on a main session and imports the shared
 * session objects: an AES-256 key, a 131-byte HMAC key and an RSA-2048 key pair, all with fixed
 * values. Then THREADS threads each run ITERATIONS iterations of the same work on sessions of
 * their own, opened and closed concurrently:
 *   random bytes, SHA-256, HMAC-SHA256 sign and verify, AES-CBC multi-part encrypt and decrypt,
 *   AES-GCM encrypt, decrypt and a refused decrypt of a forged tag, RSA-OAEP (SHA-1) encrypt and
 *   decrypt, a find by label, a session object made, read and destroyed, a second session closed
 *   with a digest active and the first closed with an HMAC signature active.
 * Known-answer values (SHA-256 "abc", RFC 4231 case 6, SP 800-38A F.2.5, an AES-GCM vector
 * computed offline with the key and IV below) make every result exact.
 * The threads then take part in a change of login state: each opens a session, the main thread
 * logs out, every thread sees a public session, thread 0 logs in, every thread sees a user
 * session. Finally each thread leaves work behind for C_Finalize to clean up: three open sessions
 * with an active encryption, an active find and an active digest, and a session object. Even
 * rounds finalise with all of that in place (and the main session open); odd rounds call
 * C_CloseAllSessions first.
 *
 * Checks made by the main thread print one line each; the threads' checks print only when they
 * fail (with the thread's number). The program ends with "N passed, N failed", where N is
 *   ROUNDS * (ROUND_CHECKS + THREADS * (ITERATIONS * ITERATION_CHECKS + THREAD_CHECKS))
 *   + the odd rounds' CLOSE_ALL_CHECKS + the even rounds' MUTEX_CHECKS
 * with the constants defined below; the exit status is 1 when any check failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "p11gate.h"

/* The number of checks each part makes (tests/memcheck.rs computes the total from these). */
#define ROUND_CHECKS 13     /* main thread, every round, and thread 0's C_Login */
#define ITERATION_CHECKS 42 /* one thread, one iteration */
#define THREAD_CHECKS 10    /* one thread, login phase and work left behind */
#define CLOSE_ALL_CHECKS 2  /* odd rounds: C_CloseAllSessions */
#define MUTEX_CHECKS 2      /* even rounds: the application's mutexes after C_Finalize */

/* ---------------------------------------------------------------------------------------------- */
/* Reporting                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

static unsigned long passed, failed;

/* Counts a check; prints it when it failed or when the main thread (tid < 0) made it. */
static int check(int tid, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int check(int tid, int ok, const char *fmt, ...)
{
    va_list ap;
    char line[512];
    int n;

    __atomic_fetch_add(ok ? &passed : &failed, 1, __ATOMIC_SEQ_CST);
    if (ok && tid >= 0)
        return ok;
    n = tid >= 0 ? snprintf(line, sizeof line, "FAIL - [thread %d] ", tid)
                 : snprintf(line, sizeof line, "%s", ok ? "ok   - " : "FAIL - ");
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    printf("%s\n", line);
    fflush(stdout);
    return ok;
}

static const char *rv_name(CK_RV rv, char buf[32])
{
    switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
    case CKR_ATTRIBUTE_VALUE_INVALID: return "CKR_ATTRIBUTE_VALUE_INVALID";
    case CKR_ENCRYPTED_DATA_INVALID: return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
    case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID: return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_OPERATION_ACTIVE: return "CKR_OPERATION_ACTIVE";
    case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SIGNATURE_INVALID: return "CKR_SIGNATURE_INVALID";
    case CKR_TEMPLATE_INCONSISTENT: return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
    case CKR_BUFFER_TOO_SMALL: return "CKR_BUFFER_TOO_SMALL";
    case CKR_CRYPTOKI_NOT_INITIALIZED: return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED: return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    default: snprintf(buf, 32, "0x%lx", (unsigned long)rv); return buf;
    }
}

/* One check on a return value. */
static int check_rv(int tid, const char *what, CK_RV got, CK_RV want)
{
    char g[32], w[32];
    if (got == want)
        return check(tid, 1, "%s -> %s", what, rv_name(got, g));
    return check(tid, 0, "%s: expected %s, got %s", what, rv_name(want, w), rv_name(got, g));
}

/* ---------------------------------------------------------------------------------------------- */
/* Fixed keys and known answers                                                                   */
/* ---------------------------------------------------------------------------------------------- */

/* NIST SP 800-38A F.2.5 (CBC-AES256.Encrypt): key, IV, four blocks in and out. */
static const CK_BYTE aes_key[32] = {
    0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe, 0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
    0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7, 0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4,
};
static const CK_BYTE cbc_iv[16] = {
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
};
static const CK_BYTE cbc_plain[64] = {
    0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17, 0x2a,
    0xae, 0x2d, 0x8a, 0x57, 0x1e, 0x03, 0xac, 0x9c, 0x9e, 0xb7, 0x6f, 0xac, 0x45, 0xaf, 0x8e, 0x51,
    0x30, 0xc8, 0x1c, 0x46, 0xa3, 0x5c, 0xe4, 0x11, 0xe5, 0xfb, 0xc1, 0x19, 0x1a, 0x0a, 0x52, 0xef,
    0xf6, 0x9f, 0x24, 0x45, 0xdf, 0x4f, 0x9b, 0x17, 0xad, 0x2b, 0x41, 0x7b, 0xe6, 0x6c, 0x37, 0x10,
};
static const CK_BYTE cbc_cipher[64] = {
    0xf5, 0x8c, 0x4c, 0x04, 0xd6, 0xe5, 0xf1, 0xba, 0x77, 0x9e, 0xab, 0xfb, 0x5f, 0x7b, 0xfb, 0xd6,
    0x9c, 0xfc, 0x4e, 0x96, 0x7e, 0xdb, 0x80, 0x8d, 0x67, 0x9f, 0x77, 0x7b, 0xc6, 0x70, 0x2c, 0x7d,
    0x39, 0xf2, 0x33, 0x69, 0xa9, 0xd9, 0xba, 0xcf, 0xa5, 0x30, 0xe2, 0x63, 0x04, 0x23, 0x14, 0x61,
    0xb2, 0xeb, 0x05, 0xe2, 0xc3, 0x9b, 0xe9, 0xfc, 0xda, 0x6c, 0x19, 0x07, 0x8c, 0x6a, 0x9d, 0x1b,
};

/* AES-GCM with aes_key, a 96-bit IV and 128-bit tag (computed offline with Python's
 * cryptography package): 40 bytes of plaintext, 40 bytes of ciphertext + 16 of tag. */
static const CK_BYTE gcm_iv[12] = {
    0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb,
};
static const char gcm_aad[] = "p11gate threads aad";
static const char gcm_plain[] = "forty-one bytes of GCM plaintext, thread";
static const CK_BYTE gcm_cipher[56] = {
    0x28, 0x0b, 0xec, 0xa3, 0x34, 0x08, 0x8e, 0xc0, 0x8e, 0xbd, 0x1e, 0x05, 0x55, 0xd4, 0xc6, 0xd8,
    0x6e, 0x4c, 0xf7, 0xd4, 0x80, 0xd2, 0xe3, 0x34, 0x02, 0xf9, 0x81, 0x2e, 0x3c, 0xa8, 0xc6, 0xf9,
    0xb3, 0x5d, 0x4b, 0x2f, 0x83, 0x9d, 0x8f, 0xb9, 0xc3, 0xbe, 0x9d, 0x44, 0x56, 0xe4, 0x77, 0x58,
    0x55, 0x47, 0x13, 0xf4, 0x84, 0x11, 0xaa, 0x8c,
};

/* RFC 4231 test case 6: HMAC-SHA-256 with a 131-byte key of 0xaa. */
static const char hmac_data[] = "Test Using Larger Than Block-Size Key - Hash Key First";
static const CK_BYTE hmac_mac[32] = {
    0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26, 0xaa, 0xcb, 0xf5, 0xb7, 0x7f,
    0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28, 0xc5, 0x14, 0x05, 0x46, 0x04, 0x0f, 0x0e, 0xe3, 0x7f, 0x54,
};

/* FIPS 180-2: SHA-256("abc"). */
static const CK_BYTE sha256_abc[32] = {
    0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
    0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
};

/* An RSA-2048 test key made for this program with `openssl genrsa 2048` (it protects nothing). */
static const CK_BYTE rsa_n[256] = {
    0x9c, 0xd1, 0xf0, 0x89, 0x78, 0x22, 0x3d, 0x23, 0xbb, 0x22, 0x27, 0x29, 0xbe, 0x84, 0xe7, 0xbb,
    0x5f, 0x4a, 0x7d, 0x82, 0x50, 0xc9, 0xac, 0x85, 0x43, 0x58, 0x52, 0x1b, 0xe9, 0x8a, 0x2c, 0x58,
    0xbd, 0xf6, 0x47, 0x0d, 0x4c, 0x75, 0x4c, 0xcb, 0xfa, 0x89, 0x85, 0xdf, 0x07, 0x80, 0x2d, 0x2d,
    0x5c, 0x4e, 0x15, 0x81, 0x70, 0x34, 0xb7, 0x58, 0xd8, 0x91, 0x2a, 0x00, 0x16, 0xb9, 0x43, 0xe2,
    0x11, 0xd7, 0x39, 0x1d, 0x1d, 0xad, 0x51, 0x59, 0x7f, 0x9f, 0xa9, 0xae, 0xb0, 0x32, 0xed, 0xf5,
    0xfd, 0x14, 0x3f, 0xb7, 0x75, 0xf3, 0xae, 0x8e, 0x39, 0xe4, 0x0c, 0xc8, 0x88, 0x9a, 0x3e, 0x08,
    0xef, 0xd7, 0x56, 0x25, 0xa9, 0x85, 0x26, 0xfc, 0x73, 0x2c, 0xf6, 0x58, 0xc6, 0x5a, 0x01, 0x41,
    0x8f, 0x1e, 0xf3, 0xab, 0xf9, 0xb4, 0xfc, 0x58, 0xc3, 0xe5, 0xce, 0x56, 0x40, 0x19, 0x6b, 0xcb,
    0x2e, 0x31, 0xf4, 0xd2, 0x47, 0x5f, 0x62, 0x1b, 0x22, 0x2e, 0xdb, 0xfc, 0x70, 0xc6, 0x6a, 0x83,
    0x80, 0x58, 0x7b, 0x1f, 0x01, 0x4f, 0xaf, 0xb7, 0x75, 0xed, 0x80, 0x32, 0xdf, 0xfb, 0x13, 0xec,
    0xa5, 0x81, 0x9d, 0x76, 0xf8, 0xf3, 0xd9, 0x64, 0x68, 0xd9, 0x49, 0xb4, 0x88, 0x0f, 0xc9, 0x95,
    0x83, 0xab, 0x43, 0x9a, 0xa6, 0x88, 0xd5, 0xf1, 0xdd, 0x7a, 0x78, 0xb8, 0xfb, 0x43, 0xe0, 0xc1,
    0xd2, 0x01, 0x5c, 0xaa, 0xae, 0x10, 0x62, 0x94, 0x4e, 0x49, 0xc7, 0x62, 0xd5, 0x4f, 0xc2, 0xc2,
    0xd5, 0xa2, 0xbb, 0xe7, 0xa7, 0x82, 0xc2, 0xc0, 0x14, 0xe2, 0x25, 0x64, 0xde, 0x46, 0xde, 0x8c,
    0x14, 0xb6, 0x27, 0xb6, 0x03, 0xe4, 0x32, 0x6c, 0x1d, 0x8e, 0x1f, 0xbd, 0xc4, 0xdf, 0x8e, 0x7a,
    0x04, 0xb6, 0xdb, 0xab, 0x92, 0x5e, 0x3e, 0x0d, 0x2e, 0x90, 0xdd, 0x58, 0x94, 0xf0, 0xe9, 0xc9,
};

static const CK_BYTE rsa_e[3] = {
    0x01, 0x00, 0x01,
};

static const CK_BYTE rsa_d[256] = {
    0x0d, 0x47, 0x4c, 0x88, 0x03, 0x5b, 0x58, 0xd4, 0x75, 0xf3, 0xbc, 0x1f, 0xb1, 0x81, 0x64, 0xf2,
    0xcd, 0x6c, 0x8c, 0x08, 0x95, 0x09, 0x22, 0x99, 0xcd, 0x1c, 0x45, 0x25, 0x96, 0x66, 0x8b, 0xff,
    0x3e, 0xa4, 0x84, 0x1b, 0x28, 0xea, 0x74, 0xc4, 0x7f, 0xd4, 0x15, 0xb9, 0x0f, 0x14, 0x48, 0x1f,
    0x03, 0x66, 0x1c, 0x35, 0x8f, 0xd7, 0xf2, 0xdf, 0x6b, 0xc5, 0x0c, 0xea, 0xa1, 0x81, 0xf1, 0xf0,
    0xca, 0x44, 0x70, 0x52, 0x5a, 0x11, 0x33, 0x26, 0x72, 0x23, 0x45, 0x95, 0xa4, 0x57, 0x47, 0xa5,
    0x70, 0xd6, 0xbe, 0x57, 0x6d, 0x3e, 0x23, 0x3d, 0x69, 0x42, 0xf9, 0x5f, 0x20, 0x8b, 0xf8, 0xed,
    0x3e, 0x4b, 0xbc, 0x40, 0x67, 0xa4, 0x7d, 0xea, 0xd9, 0xe0, 0xc8, 0x82, 0x37, 0x57, 0x67, 0x2c,
    0x53, 0x2f, 0x52, 0x80, 0x31, 0x1e, 0x65, 0x50, 0xa9, 0xd3, 0xc3, 0x5f, 0x33, 0xc1, 0xc3, 0x49,
    0xf8, 0xc4, 0xe2, 0x78, 0x77, 0xa9, 0xb0, 0xf3, 0x2a, 0x7c, 0x3c, 0xa4, 0x0d, 0x50, 0x57, 0xe7,
    0x5d, 0x91, 0xad, 0x17, 0xde, 0xe8, 0x63, 0x96, 0x7f, 0x0e, 0xf2, 0x72, 0xbf, 0x6d, 0x0b, 0x53,
    0x57, 0xd1, 0x6f, 0x21, 0x90, 0x14, 0xfb, 0x79, 0x97, 0xea, 0x79, 0xd1, 0x34, 0xae, 0x5d, 0x5d,
    0x26, 0x93, 0x3a, 0xa3, 0x0a, 0xd3, 0x72, 0x4d, 0xdd, 0x1e, 0x20, 0x16, 0xb6, 0x38, 0x37, 0x57,
    0xed, 0xab, 0xed, 0x73, 0xdd, 0x6e, 0xbf, 0xc8, 0xc9, 0xb6, 0xe2, 0xaa, 0x82, 0xfd, 0x99, 0xbc,
    0x82, 0x15, 0xd0, 0xd3, 0x73, 0xfe, 0xb5, 0xf0, 0x03, 0xfd, 0x61, 0x49, 0x18, 0xc7, 0x95, 0x06,
    0xf9, 0xef, 0x37, 0x5a, 0x37, 0x8f, 0x1d, 0xed, 0x9f, 0xd4, 0x45, 0xfa, 0xb4, 0x0c, 0x80, 0x18,
    0x2e, 0x97, 0xfc, 0xbe, 0x91, 0x37, 0x26, 0xa1, 0xa9, 0xd6, 0xff, 0xc4, 0x0f, 0xcb, 0x14, 0x21,
};

static const CK_BYTE rsa_p[128] = {
    0xd3, 0xf5, 0x84, 0x10, 0xb6, 0x12, 0xd5, 0x5a, 0x48, 0x91, 0x96, 0x2c, 0x80, 0xca, 0x19, 0x26,
    0x6b, 0x48, 0x23, 0xe6, 0x94, 0x5e, 0xbc, 0x5b, 0x71, 0x29, 0x38, 0x33, 0x71, 0x21, 0x0c, 0xfc,
    0x7b, 0x9f, 0xd2, 0x30, 0x1e, 0x48, 0x83, 0x01, 0x50, 0xa0, 0x4c, 0x2e, 0x60, 0x03, 0xa1, 0x75,
    0xb0, 0xde, 0xe1, 0xb4, 0x17, 0x71, 0x88, 0xfb, 0x72, 0x05, 0xbd, 0x82, 0x7c, 0x53, 0xb8, 0xd2,
    0xb8, 0x07, 0xb5, 0x3d, 0xf3, 0x7a, 0x15, 0xc8, 0x3a, 0x56, 0x98, 0x29, 0xe8, 0x78, 0x77, 0x3d,
    0x01, 0xa7, 0xa2, 0x17, 0x80, 0xe2, 0x84, 0xfa, 0x0f, 0xa6, 0xf8, 0x24, 0xc6, 0xc0, 0x90, 0xc1,
    0x0f, 0x9f, 0x2b, 0xd0, 0xcb, 0xcc, 0x17, 0x3b, 0xb2, 0x1f, 0x00, 0x36, 0xef, 0xd1, 0xee, 0x0c,
    0xd8, 0x85, 0x87, 0xb7, 0x2b, 0xd5, 0x04, 0x6e, 0x8f, 0x91, 0x74, 0x04, 0x2a, 0x4b, 0xf6, 0xd9,
};

static const CK_BYTE rsa_q[128] = {
    0xbd, 0x67, 0x7b, 0x80, 0x10, 0xa3, 0xdc, 0x94, 0x96, 0xcb, 0xcd, 0x8b, 0x1c, 0x2c, 0x78, 0x50,
    0x10, 0x0b, 0x86, 0x1f, 0x92, 0x5a, 0xa6, 0xce, 0xde, 0xb2, 0xd7, 0xc8, 0x8a, 0x93, 0x45, 0x82,
    0xa6, 0x79, 0x04, 0xad, 0x56, 0xc3, 0x64, 0x91, 0xbd, 0x4d, 0xd7, 0xca, 0x7a, 0x81, 0x7e, 0x08,
    0x99, 0x3e, 0x05, 0x0b, 0xf6, 0x64, 0xb7, 0x5d, 0x34, 0xcd, 0x19, 0x8f, 0xa1, 0xe5, 0xf2, 0x40,
    0x97, 0xf5, 0x32, 0x4d, 0xe2, 0x15, 0x2a, 0x5e, 0x83, 0x7d, 0x6f, 0xe7, 0x99, 0x1d, 0xfb, 0x7d,
    0x59, 0x11, 0xbe, 0x8f, 0xfa, 0x3d, 0x32, 0xbf, 0xbc, 0xfe, 0x21, 0x85, 0xb3, 0xde, 0xd7, 0x3d,
    0xe1, 0x33, 0x92, 0xa2, 0xcd, 0xdb, 0xe7, 0x70, 0xc9, 0x16, 0x65, 0x79, 0xd8, 0x3d, 0x0e, 0x3f,
    0x66, 0x90, 0xbc, 0xb5, 0x0d, 0x16, 0x3c, 0x56, 0xa4, 0xf6, 0xdf, 0x40, 0xb7, 0x20, 0x14, 0x71,
};

static const CK_BYTE rsa_dp[128] = {
    0xc1, 0x36, 0xb4, 0x2d, 0x7b, 0x9b, 0xcd, 0x6a, 0xe0, 0x6d, 0xfe, 0x24, 0x11, 0x3e, 0xa9, 0x10,
    0x71, 0x89, 0x30, 0x58, 0xb7, 0x75, 0x68, 0x64, 0x3e, 0xd2, 0x61, 0x4d, 0xdb, 0x59, 0x52, 0x7a,
    0x31, 0xc3, 0x2d, 0x99, 0xf9, 0x71, 0x06, 0x22, 0xc3, 0xb9, 0x6b, 0xd8, 0x76, 0x63, 0xb8, 0xe2,
    0x0c, 0xda, 0x0f, 0x8a, 0xd8, 0x38, 0x01, 0xb3, 0x9c, 0x6c, 0x09, 0x25, 0x92, 0x69, 0xcb, 0x38,
    0x22, 0xd3, 0xbb, 0xee, 0x7e, 0x2d, 0x13, 0x00, 0x13, 0xd5, 0xee, 0x1d, 0x7d, 0xb1, 0x9a, 0x98,
    0x3d, 0x12, 0xef, 0x5a, 0x57, 0x7d, 0xa5, 0xd4, 0x41, 0x42, 0x66, 0x3f, 0x38, 0x02, 0x3f, 0xb2,
    0x0d, 0xa8, 0x7e, 0x0b, 0x76, 0x4b, 0x53, 0xfe, 0x71, 0xcf, 0x7a, 0xa5, 0x99, 0x95, 0x97, 0x57,
    0x94, 0x64, 0x9c, 0xa3, 0x67, 0xcc, 0x65, 0x9e, 0xd7, 0x36, 0xb3, 0x38, 0x3c, 0xca, 0x44, 0x79,
};

static const CK_BYTE rsa_dq[128] = {
    0x5f, 0xe7, 0xe3, 0x68, 0x50, 0x84, 0xb8, 0xaf, 0xe0, 0xbf, 0xa7, 0xff, 0xb5, 0xaf, 0x6a, 0xe8,
    0x97, 0x87, 0x4e, 0x4d, 0xf4, 0x4c, 0xc4, 0xc4, 0x61, 0x8d, 0xcb, 0xa7, 0xf7, 0x4b, 0x65, 0x5a,
    0x27, 0xb3, 0x85, 0xc3, 0xc3, 0xf8, 0x42, 0x97, 0x6d, 0x74, 0xda, 0x3c, 0xe3, 0xd5, 0x68, 0x1d,
    0x30, 0x83, 0x70, 0x08, 0xc3, 0xa5, 0xf2, 0x17, 0x57, 0x22, 0x37, 0xbc, 0x3c, 0x2d, 0x74, 0x82,
    0x72, 0xaf, 0xac, 0xde, 0x35, 0x09, 0xa4, 0x9f, 0xa1, 0x13, 0x46, 0x33, 0xce, 0x9b, 0x98, 0xf9,
    0xba, 0xbd, 0x3a, 0x72, 0x2b, 0x33, 0x0b, 0xdc, 0x7c, 0xf5, 0x6d, 0xc2, 0x06, 0xf7, 0x62, 0xa4,
    0x29, 0xc1, 0x74, 0x91, 0xcd, 0x8d, 0x79, 0x5e, 0xe9, 0xe3, 0xd6, 0x54, 0x61, 0x43, 0x61, 0x50,
    0x87, 0x3d, 0xe8, 0xe0, 0x00, 0x95, 0x6e, 0xce, 0x2c, 0xcf, 0xf8, 0xf2, 0x0b, 0x08, 0x4a, 0x71,
};

static const CK_BYTE rsa_qinv[128] = {
    0x8d, 0x4c, 0xeb, 0xe5, 0x80, 0x46, 0x99, 0x56, 0xe7, 0xad, 0x3f, 0xa5, 0x58, 0x7e, 0xb8, 0xfc,
    0x29, 0x48, 0x78, 0x66, 0x0b, 0x48, 0x17, 0xaf, 0xe4, 0xfd, 0xb1, 0xdc, 0x95, 0x52, 0x39, 0xfa,
    0xa5, 0x71, 0xd0, 0x66, 0xa5, 0x66, 0xff, 0x9d, 0xdf, 0x5f, 0x38, 0x7e, 0xe6, 0xc1, 0xa4, 0x64,
    0xae, 0xf4, 0x1c, 0x2a, 0xa7, 0x35, 0x65, 0xfb, 0x21, 0xab, 0x45, 0x80, 0x87, 0xd9, 0x59, 0x62,
    0x6b, 0xc9, 0x59, 0x43, 0x49, 0xa3, 0xf3, 0x33, 0xa1, 0xe8, 0x23, 0xd4, 0x2c, 0x56, 0xc2, 0x99,
    0xa8, 0x58, 0x26, 0xe4, 0x8a, 0x1e, 0x53, 0x2e, 0xda, 0x64, 0x4e, 0x01, 0x12, 0x08, 0xd2, 0x09,
    0x38, 0x5a, 0x6a, 0xac, 0xb0, 0xbb, 0xf0, 0x8d, 0x9a, 0xb5, 0xc4, 0x9e, 0x27, 0x21, 0xfb, 0xbc,
    0xbd, 0xee, 0x90, 0x2a, 0x54, 0xd4, 0x42, 0xbd, 0x1a, 0xf1, 0x5c, 0xb0, 0x92, 0x86, 0x3a, 0x07,
};

/* ---------------------------------------------------------------------------------------------- */
/* Application mutex callbacks (pthread based, counting misuse)                                   */
/* ---------------------------------------------------------------------------------------------- */

#define MUTEX_MAGIC 0x6d757478u

struct app_mutex {
    unsigned magic;
    int locked;
    pthread_mutex_t m;
};

static unsigned long n_created, n_destroyed, n_misuse;

static CK_RV app_create(void **out)
{
    struct app_mutex *am;
    if (!out) {
        __atomic_fetch_add(&n_misuse, 1, __ATOMIC_SEQ_CST);
        return CKR_ARGUMENTS_BAD;
    }
    am = calloc(1, sizeof *am);
    if (!am)
        return CKR_HOST_MEMORY;
    am->magic = MUTEX_MAGIC;
    pthread_mutex_init(&am->m, NULL);
    *out = am;
    __atomic_fetch_add(&n_created, 1, __ATOMIC_SEQ_CST);
    return CKR_OK;
}

static CK_RV app_destroy(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC || am->locked) {
        __atomic_fetch_add(&n_misuse, 1, __ATOMIC_SEQ_CST);
        return CKR_MUTEX_BAD;
    }
    am->magic = 0;
    pthread_mutex_destroy(&am->m);
    free(am);
    __atomic_fetch_add(&n_destroyed, 1, __ATOMIC_SEQ_CST);
    return CKR_OK;
}

static CK_RV app_lock(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC) {
        __atomic_fetch_add(&n_misuse, 1, __ATOMIC_SEQ_CST);
        return CKR_MUTEX_BAD;
    }
    pthread_mutex_lock(&am->m);
    am->locked = 1;
    return CKR_OK;
}

static CK_RV app_unlock(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC || !am->locked) {
        __atomic_fetch_add(&n_misuse, 1, __ATOMIC_SEQ_CST);
        return am && am->magic == MUTEX_MAGIC ? CKR_MUTEX_NOT_LOCKED : CKR_MUTEX_BAD;
    }
    am->locked = 0;
    pthread_mutex_unlock(&am->m);
    return CKR_OK;
}

/* ---------------------------------------------------------------------------------------------- */
/* Shared state                                                                                   */
/* ---------------------------------------------------------------------------------------------- */

static int n_threads = 4, iterations = 3, rounds = 2;
static CK_RV forged_tag_rv = CKR_ENCRYPTED_DATA_INVALID; /* -T */
static const char *label, *pin;
static CK_FUNCTION_LIST_PTR F;
static CK_SLOT_ID slot;
static CK_SESSION_HANDLE main_session;
static CK_OBJECT_HANDLE aes, hmac, rsa_pub, rsa_priv;
static pthread_barrier_t barrier;

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static int label_matches(const CK_UTF8CHAR field[32], const char *want)
{
    size_t n = strlen(want);
    if (n > 32 || memcmp(field, want, n) != 0)
        return 0;
    for (size_t i = n; i < 32; i++)
        if (field[i] != ' ')
            return 0;
    return 1;
}

/* The slot whose token carries `label`; 0 with *found = 0 when there is none. */
static CK_SLOT_ID find_slot(int *found)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    *found = 0;
    if (F->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return 0;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_matches(ti.label, label)) {
            *found = 1;
            return slots[i];
        }
    }
    return 0;
}

/* Imports the shared session objects on the main session (four checks). */
static void import_objects(void)
{
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY, pub = CKO_PUBLIC_KEY, priv = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt_aes = CKK_AES, kt_generic = CKK_GENERIC_SECRET, kt_rsa = CKK_RSA;
    CK_BYTE hmac_key[131];
    char aes_label[] = "mt-aes", hmac_label[] = "mt-hmac", rsa_label[] = "mt-rsa";
    CK_ATTRIBUTE aes_t[] = {
        {CKA_CLASS, &secret, sizeof secret},
        {CKA_KEY_TYPE, &kt_aes, sizeof kt_aes},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_PRIVATE, &no, sizeof no},
        {CKA_LABEL, aes_label, sizeof aes_label - 1},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_DECRYPT, &yes, sizeof yes},
        {CKA_VALUE, (void *)aes_key, sizeof aes_key},
    };
    CK_ATTRIBUTE hmac_t[] = {
        {CKA_CLASS, &secret, sizeof secret},
        {CKA_KEY_TYPE, &kt_generic, sizeof kt_generic},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_PRIVATE, &no, sizeof no},
        {CKA_LABEL, hmac_label, sizeof hmac_label - 1},
        {CKA_SIGN, &yes, sizeof yes},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_VALUE, hmac_key, sizeof hmac_key},
    };
    CK_ATTRIBUTE pub_t[] = {
        {CKA_CLASS, &pub, sizeof pub},
        {CKA_KEY_TYPE, &kt_rsa, sizeof kt_rsa},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_LABEL, rsa_label, sizeof rsa_label - 1},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_MODULUS, (void *)rsa_n, sizeof rsa_n},
        {CKA_PUBLIC_EXPONENT, (void *)rsa_e, sizeof rsa_e},
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_CLASS, &priv, sizeof priv},
        {CKA_KEY_TYPE, &kt_rsa, sizeof kt_rsa},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_LABEL, rsa_label, sizeof rsa_label - 1},
        {CKA_DECRYPT, &yes, sizeof yes},
        {CKA_MODULUS, (void *)rsa_n, sizeof rsa_n},
        {CKA_PUBLIC_EXPONENT, (void *)rsa_e, sizeof rsa_e},
        {CKA_PRIVATE_EXPONENT, (void *)rsa_d, sizeof rsa_d},
        {CKA_PRIME_1, (void *)rsa_p, sizeof rsa_p},
        {CKA_PRIME_2, (void *)rsa_q, sizeof rsa_q},
        {CKA_EXPONENT_1, (void *)rsa_dp, sizeof rsa_dp},
        {CKA_EXPONENT_2, (void *)rsa_dq, sizeof rsa_dq},
        {CKA_COEFFICIENT, (void *)rsa_qinv, sizeof rsa_qinv},
    };

    memset(hmac_key, 0xaa, sizeof hmac_key);
    check_rv(-1, "C_CreateObject(AES-256 key)",
             F->C_CreateObject(main_session, aes_t, sizeof aes_t / sizeof aes_t[0], &aes), CKR_OK);
    check_rv(-1, "C_CreateObject(131-byte HMAC key)",
             F->C_CreateObject(main_session, hmac_t, sizeof hmac_t / sizeof hmac_t[0], &hmac),
             CKR_OK);
    check_rv(-1, "C_CreateObject(RSA-2048 public key)",
             F->C_CreateObject(main_session, pub_t, sizeof pub_t / sizeof pub_t[0], &rsa_pub),
             CKR_OK);
    check_rv(-1, "C_CreateObject(RSA-2048 private key)",
             F->C_CreateObject(main_session, priv_t, sizeof priv_t / sizeof priv_t[0], &rsa_priv),
             CKR_OK);
}

/* ---------------------------------------------------------------------------------------------- */
/* One thread's work                                                                              */
/* ---------------------------------------------------------------------------------------------- */

/* Checks that `got` (length `len`) equals `want` (length `want_len`). */
static void check_bytes(int tid, const char *what, const CK_BYTE *got, CK_ULONG len,
                        const CK_BYTE *want, CK_ULONG want_len)
{
    check(tid, len == want_len && memcmp(got, want, want_len) == 0,
          "%s: %lu bytes, %s the expected %lu", what, (unsigned long)len,
          len == want_len && memcmp(got, want, want_len) == 0 ? "equal to" : "NOT equal to",
          (unsigned long)want_len);
}

/* The session's state is `want`. */
static void check_state(int tid, const char *what, CK_SESSION_HANDLE h, CK_STATE want)
{
    CK_SESSION_INFO si;
    CK_RV rv = F->C_GetSessionInfo(h, &si);
    check(tid, rv == CKR_OK && si.state == want, "%s: C_GetSessionInfo -> 0x%lx, state %lu (want %lu)",
          what, (unsigned long)rv, rv == CKR_OK ? (unsigned long)si.state : 0UL,
          (unsigned long)want);
}

/* One iteration: ITERATION_CHECKS checks, whatever fails. */
static void iteration(int tid, int i)
{
    char what[64];
    CK_FLAGS flags = CKF_SERIAL_SESSION | (i % 2 == 0 ? CKF_RW_SESSION : 0);
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE, h2 = CK_INVALID_HANDLE;
    CK_BYTE buf[512], out[512], zero[32];
    CK_ULONG len, part, total;
    CK_MECHANISM sha256 = {CKM_SHA256, NULL, 0};
    CK_MECHANISM hmac_m = {CKM_SHA256_HMAC, NULL, 0};
    CK_MECHANISM cbc = {CKM_AES_CBC, (void *)cbc_iv, sizeof cbc_iv};
    CK_GCM_PARAMS gcm_p = {(CK_BYTE_PTR)gcm_iv, sizeof gcm_iv, 96, (CK_BYTE_PTR)gcm_aad,
                           sizeof gcm_aad - 1, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gcm_p, sizeof gcm_p};
    CK_RSA_PKCS_OAEP_PARAMS oaep_p = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM oaep = {CKM_RSA_PKCS_OAEP, &oaep_p, sizeof oaep_p};
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY, data_class = CKO_DATA;
    char aes_label[] = "mt-aes", data_label[32];
    CK_BYTE data_value[24];
    CK_ATTRIBUTE find_t[] = {
        {CKA_CLASS, &secret, sizeof secret},
        {CKA_LABEL, aes_label, sizeof aes_label - 1},
    };
    CK_OBJECT_HANDLE found[4], data = CK_INVALID_HANDLE;
    CK_ULONG n_found = 0;

    snprintf(data_label, sizeof data_label, "mt-data-%d-%d", tid, i);
    for (size_t k = 0; k < sizeof data_value; k++)
        data_value[k] = (CK_BYTE)(tid * 31 + i * 7 + (int)k);
    memset(zero, 0, sizeof zero);

    /* Session and login state (3) */
    snprintf(what, sizeof what, "iteration %d: C_OpenSession(%s)", i, i % 2 ? "RO" : "RW");
    check_rv(tid, what, F->C_OpenSession(slot, flags, NULL, NULL, &h), CKR_OK);
    check_state(tid, "new session", h, i % 2 ? CKS_RO_USER_FUNCTIONS : CKS_RW_USER_FUNCTIONS);
    check_rv(tid, "C_Login while logged in",
             F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)),
             CKR_USER_ALREADY_LOGGED_IN);

    /* Random (2) */
    memset(buf, 0, 32);
    check_rv(tid, "C_GenerateRandom(32)", F->C_GenerateRandom(h, buf, 32), CKR_OK);
    check(tid, memcmp(buf, zero, 32) != 0, "random bytes are not all zero");

    /* SHA-256 (3) */
    check_rv(tid, "C_DigestInit(SHA-256)", F->C_DigestInit(h, &sha256), CKR_OK);
    len = sizeof out;
    check_rv(tid, "C_Digest(\"abc\")", F->C_Digest(h, (CK_BYTE_PTR) "abc", 3, out, &len), CKR_OK);
    check_bytes(tid, "SHA-256(\"abc\")", out, len, sha256_abc, sizeof sha256_abc);

    /* HMAC-SHA256 (5) */
    check_rv(tid, "C_SignInit(HMAC-SHA256)", F->C_SignInit(h, &hmac_m, hmac), CKR_OK);
    len = sizeof out;
    check_rv(tid, "C_Sign(HMAC)",
             F->C_Sign(h, (CK_BYTE_PTR)hmac_data, sizeof hmac_data - 1, out, &len), CKR_OK);
    check_bytes(tid, "HMAC-SHA256 (RFC 4231 case 6)", out, len, hmac_mac, sizeof hmac_mac);
    check_rv(tid, "C_VerifyInit(HMAC-SHA256)", F->C_VerifyInit(h, &hmac_m, hmac), CKR_OK);
    check_rv(tid, "C_Verify(HMAC)",
             F->C_Verify(h, (CK_BYTE_PTR)hmac_data, sizeof hmac_data - 1, (CK_BYTE_PTR)hmac_mac,
                         sizeof hmac_mac),
             CKR_OK);

    /* AES-CBC: multi-part encryption, single-part decryption (7) */
    check_rv(tid, "C_EncryptInit(AES-CBC)", F->C_EncryptInit(h, &cbc, aes), CKR_OK);
    total = 0;
    part = sizeof out;
    check_rv(tid, "C_EncryptUpdate(32)", F->C_EncryptUpdate(h, (CK_BYTE_PTR)cbc_plain, 32, out, &part),
             CKR_OK);
    total += part;
    part = sizeof out - total;
    check_rv(tid, "C_EncryptUpdate(32) again",
             F->C_EncryptUpdate(h, (CK_BYTE_PTR)cbc_plain + 32, 32, out + total, &part), CKR_OK);
    total += part;
    part = sizeof out - total;
    check_rv(tid, "C_EncryptFinal", F->C_EncryptFinal(h, out + total, &part), CKR_OK);
    total += part;
    check_bytes(tid, "AES-CBC (SP 800-38A F.2.5)", out, total, cbc_cipher, sizeof cbc_cipher);
    check_rv(tid, "C_DecryptInit(AES-CBC)", F->C_DecryptInit(h, &cbc, aes), CKR_OK);
    len = sizeof buf;
    F->C_Decrypt(h, (CK_BYTE_PTR)cbc_cipher, sizeof cbc_cipher, buf, &len);
    check_bytes(tid, "AES-CBC decryption", buf, len, cbc_plain, sizeof cbc_plain);

    /* AES-GCM: the known answer, its decryption, a forged tag refused (8) */
    check_rv(tid, "C_EncryptInit(AES-GCM)", F->C_EncryptInit(h, &gcm, aes), CKR_OK);
    len = sizeof out;
    check_rv(tid, "C_Encrypt(AES-GCM)",
             F->C_Encrypt(h, (CK_BYTE_PTR)gcm_plain, sizeof gcm_plain - 1, out, &len), CKR_OK);
    check_bytes(tid, "AES-GCM ciphertext and tag", out, len, gcm_cipher, sizeof gcm_cipher);
    check_rv(tid, "C_DecryptInit(AES-GCM)", F->C_DecryptInit(h, &gcm, aes), CKR_OK);
    len = sizeof buf;
    check_rv(tid, "C_Decrypt(AES-GCM)",
             F->C_Decrypt(h, (CK_BYTE_PTR)gcm_cipher, sizeof gcm_cipher, buf, &len), CKR_OK);
    check_bytes(tid, "AES-GCM decryption", buf, len, (const CK_BYTE *)gcm_plain,
                sizeof gcm_plain - 1);
    check_rv(tid, "C_DecryptInit(AES-GCM) for a forged tag", F->C_DecryptInit(h, &gcm, aes),
             CKR_OK);
    memcpy(out, gcm_cipher, sizeof gcm_cipher);
    out[sizeof gcm_cipher - 1] ^= 0x01;
    len = sizeof buf;
    check_rv(tid, "C_Decrypt(AES-GCM, forged tag)",
             F->C_Decrypt(h, out, sizeof gcm_cipher, buf, &len), forged_tag_rv);

    /* RSA-OAEP (SHA-1: all SoftHSMv2 2.6 offers) round trip (4, one of them for the length) */
    check_rv(tid, "C_EncryptInit(RSA-OAEP)", F->C_EncryptInit(h, &oaep, rsa_pub), CKR_OK);
    len = sizeof out;
    F->C_Encrypt(h, data_value, sizeof data_value, out, &len);
    check(tid, len == 256, "RSA-OAEP ciphertext is 256 bytes (%lu)", (unsigned long)len);
    check_rv(tid, "C_DecryptInit(RSA-OAEP)", F->C_DecryptInit(h, &oaep, rsa_priv), CKR_OK);
    total = len;
    len = sizeof buf;
    F->C_Decrypt(h, out, total, buf, &len);
    check_bytes(tid, "RSA-OAEP decryption", buf, len, data_value, sizeof data_value);

    /* Find the AES key by label (2) */
    check_rv(tid, "C_FindObjectsInit(mt-aes)",
             F->C_FindObjectsInit(h, find_t, sizeof find_t / sizeof find_t[0]), CKR_OK);
    F->C_FindObjects(h, found, 4, &n_found);
    check(tid, F->C_FindObjectsFinal(h) == CKR_OK && n_found == 1 && found[0] == aes,
          "C_FindObjects finds the AES key once (%lu found)", (unsigned long)n_found);

    /* A session object made, read and destroyed (3) */
    {
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &data_class, sizeof data_class},
            {CKA_TOKEN, &no, sizeof no},
            {CKA_LABEL, data_label, strlen(data_label)},
            {CKA_VALUE, data_value, sizeof data_value},
        };
        CK_ATTRIBUTE get = {CKA_VALUE, buf, sizeof buf};
        check_rv(tid, "C_CreateObject(data)", F->C_CreateObject(h, t, 4, &data), CKR_OK);
        if (F->C_GetAttributeValue(h, data, &get, 1) != CKR_OK)
            get.ulValueLen = 0;
        check_bytes(tid, "the data object's CKA_VALUE", buf, get.ulValueLen, data_value,
                    sizeof data_value);
        check_rv(tid, "C_DestroyObject(data)", F->C_DestroyObject(h, data), CKR_OK);
    }

    /* Sessions closed with operations still active (5) */
    check_rv(tid, "C_SignInit(HMAC), left active", F->C_SignInit(h, &hmac_m, hmac), CKR_OK);
    check_rv(tid, "C_OpenSession (second)", F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2),
             CKR_OK);
    check_rv(tid, "C_DigestInit(SHA-256), left active", F->C_DigestInit(h2, &sha256), CKR_OK);
    check_rv(tid, "C_CloseSession (second, digest active)", F->C_CloseSession(h2), CKR_OK);
    check_rv(tid, "C_CloseSession (HMAC active)", F->C_CloseSession(h), CKR_OK);
}

/* The login phase and the work left behind for C_Finalize (THREAD_CHECKS checks). */
static void leave_behind(int tid)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE, h2 = CK_INVALID_HANDLE, obj = CK_INVALID_HANDLE;
    CK_GCM_PARAMS gcm_p = {(CK_BYTE_PTR)gcm_iv, sizeof gcm_iv, 96, NULL, 0, 128};
    CK_MECHANISM gcm = {CKM_AES_GCM, &gcm_p, sizeof gcm_p};
    CK_MECHANISM sha256 = {CKM_SHA256, NULL, 0};
    CK_OBJECT_CLASS data_class = CKO_DATA;
    char data_label[] = "mt-left-behind";
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &data_class, sizeof data_class},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_LABEL, data_label, sizeof data_label - 1},
    };

    /* Login state seen from every thread (4, and thread 0's C_Login): the main thread logs out
     * between the first two barriers, thread 0 logs in between the next two. */
    check_rv(tid, "C_OpenSession (login phase)",
             F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h), CKR_OK);
    check_state(tid, "logged in", h, CKS_RW_USER_FUNCTIONS);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    check_state(tid, "after the main thread's C_Logout", h, CKS_RW_PUBLIC_SESSION);
    pthread_barrier_wait(&barrier);
    if (tid == 0)
        check_rv(tid, "C_Login from thread 0",
                 F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)), CKR_OK);
    pthread_barrier_wait(&barrier);
    check_state(tid, "after thread 0's C_Login", h, CKS_RW_USER_FUNCTIONS);

    /* Left behind (6): an active encryption, a second session with an active find, an active
     * digest on a third, a session object. */
    check_rv(tid, "C_EncryptInit(AES-GCM), left active", F->C_EncryptInit(h, &gcm, aes), CKR_OK);
    check_rv(tid, "C_CreateObject(data), left behind", F->C_CreateObject(h, t, 3, &obj), CKR_OK);
    check_rv(tid, "C_OpenSession, left open",
             F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2), CKR_OK);
    check_rv(tid, "C_FindObjectsInit, left active", F->C_FindObjectsInit(h2, t, 3), CKR_OK);
    check_rv(tid, "C_OpenSession, left open with a digest",
             F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h2), CKR_OK);
    check_rv(tid, "C_DigestInit(SHA-256), left active", F->C_DigestInit(h2, &sha256), CKR_OK);
}

static void *worker(void *arg)
{
    int tid = (int)(long)arg;
    for (int i = 0; i < iterations; i++)
        iteration(tid, i);
    leave_behind(tid);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Rounds                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

static void round_(int r)
{
    CK_C_INITIALIZE_ARGS a;
    pthread_t threads[64];
    char what[96];
    int found, started = 0;
    unsigned long created_before = n_created;

    memset(&a, 0, sizeof a);
    if (r % 2 == 0) {
        a.CreateMutex = app_create;
        a.DestroyMutex = app_destroy;
        a.LockMutex = app_lock;
        a.UnlockMutex = app_unlock;
    } else {
        a.flags = CKF_OS_LOCKING_OK;
    }
    snprintf(what, sizeof what, "round %d: C_Initialize(%s)", r,
             r % 2 == 0 ? "application mutexes" : "CKF_OS_LOCKING_OK");
    check_rv(-1, what, F->C_Initialize(&a), CKR_OK);
    slot = find_slot(&found);
    check(-1, found, "token \"%s\" found", label);
    check_rv(-1, "C_OpenSession (main)",
             F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                              &main_session),
             CKR_OK);
    check_rv(-1, "C_Login (main)",
             F->C_Login(main_session, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)),
             CKR_OK);
    import_objects();

    pthread_barrier_init(&barrier, NULL, (unsigned)n_threads + 1);
    for (int t = 0; t < n_threads; t++)
        if (pthread_create(&threads[t], NULL, worker, (void *)(long)t) == 0)
            started++;
    check(-1, started == n_threads, "%d threads started", started);
    if (started != n_threads) {
        fprintf(stderr, "cannot start the threads\n");
        exit(2);
    }
    /* The login phase: the threads check their sessions between these barriers. */
    pthread_barrier_wait(&barrier);
    check_rv(-1, "C_Logout (main) while the threads hold sessions", F->C_Logout(main_session),
             CKR_OK);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    for (int t = 0; t < n_threads; t++)
        pthread_join(threads[t], NULL);
    pthread_barrier_destroy(&barrier);
    check_state(-1, "main session after thread 0's C_Login", main_session, CKS_RW_USER_FUNCTIONS);

    if (r % 2 == 1) {
        check_rv(-1, "C_CloseAllSessions", F->C_CloseAllSessions(slot), CKR_OK);
        check_rv(-1, "C_CloseSession(main) after C_CloseAllSessions",
                 F->C_CloseSession(main_session), CKR_SESSION_HANDLE_INVALID);
    }
    snprintf(what, sizeof what, "round %d: C_Finalize%s", r,
             r % 2 == 0 ? " with sessions, operations and objects left behind" : "");
    check_rv(-1, what, F->C_Finalize(NULL), CKR_OK);
    if (r % 2 == 0) {
        check(-1, n_misuse == 0, "application mutexes used correctly (%lu misuses)", n_misuse);
        check(-1, n_created == n_destroyed,
              "every application mutex was destroyed (%lu created this round, %lu in all, %lu "
              "destroyed)",
              n_created - created_before, n_created, n_destroyed);
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-t THREADS] [-i ITERATIONS] [-r ROUNDS] [-T RV] -l LABEL [-p PIN] "
            "MODULE.so\n",
            argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int c;
    void *module;
    CK_C_GetFunctionList gfl;

    while ((c = getopt(argc, argv, "t:i:r:T:l:p:")) != -1) {
        switch (c) {
        case 't': n_threads = atoi(optarg); break;
        case 'i': iterations = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'T': forged_tag_rv = strtoul(optarg, NULL, 0); break;
        case 'l': label = optarg; break;
        case 'p': pin = optarg; break;
        default: usage(argv[0]);
        }
    }
    if (!pin)
        pin = getenv("P11_USER_PIN");
    if (optind + 1 != argc || !label || !pin || n_threads < 1 || n_threads > 64 ||
        iterations < 0 || rounds < 1)
        usage(argv[0]);

    module = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
    if (!module) {
        fprintf(stderr, "dlopen %s: %s\n", argv[optind], dlerror());
        return 2;
    }
    gfl = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (!gfl || gfl(&F) != CKR_OK) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 2;
    }
    for (int r = 0; r < rounds; r++)
        round_(r);
    dlclose(module);

    printf("%lu passed, %lu failed\n", passed, failed);
    return failed ? 1 : 0;
}
