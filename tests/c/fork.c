/*
 * fork.c - fork() again and again while worker threads are inside the module.
 *
 * usage: fork [-l LABEL] [-p PIN] [-n FORKS] MODULE.so     (PIN default: $P11_USER_PIN;
 *                                                            FORKS default: 1)
 *
 * The parent initialises the module, logs in, makes session keys (AES, an HMAC secret, an EC P-256
 * pair) and starts four threads that loop without pause, each on a session of its own, over
 * C_GenerateRandom, AES-CBC-PAD C_Encrypt, HMAC-SHA256 C_Sign and C_Verify, SHA-256 C_Digest and
 * ECDSA C_Sign, and every 16th round open a session, find the AES key by label and close it
 * again. The main thread forks FORKS times, each time right after it saw a worker inside a call
 * (the workers are never held: a call is in flight when fork() is called, and p11gate's fork
 * gate must let it finish first; a thread left inside the module at the moment of the fork could
 * hold a lock, p11gate's or the upstream's, such as SoftHSMv2's OpenSSL RNG lock, and the child
 * would hang on it).
 *
 * Every child must see CKR_CRYPTOKI_NOT_INITIALIZED from every call (slot list, open session, the
 * parent's session handles) until it calls C_Initialize itself, which must then work: it finds
 * the token, opens a session, logs in, draws random bytes, encrypts and decrypts, and finalises,
 * all within CHILD_TIMEOUT_SECONDS (an alarm kills a child that hangs). The parent waits for each
 * child before the next fork, checks that its workers keep working after every fork and that none
 * of their calls failed, and finalises.
 *
 * Both processes print one line per check; the first child and the parent print every check,
 * later children and the parent's per-fork checks only failures. The parent ends with
 * "N passed, N failed" and each child with "child: N passed, N failed". The exit status is 1 when
 * any check, in either process, failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "p11gate.h"

#define THREADS 4
#define WARMUP_ITERATIONS 20
/* Rounds every worker must complete after each fork before the next one. */
#define PROGRESS_PER_FORK 2
#define CHILD_TIMEOUT_SECONDS 30

static unsigned passed, failed;
static const char *prefix = "";
/* Whether passing checks are printed (failures always are). */
static int verbose = 1;

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    va_list ap;
    if (ok)
        passed++;
    else
        failed++;
    if (ok && !verbose)
        return ok;
    printf("%s%s", prefix, ok ? "ok   - " : "FAIL - ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return ok;
}

static const char *rv_name(CK_RV rv)
{
    static char other[32];
    switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
    case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
    case CKR_OPERATION_ACTIVE: return "CKR_OPERATION_ACTIVE";
    case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SIGNATURE_INVALID: return "CKR_SIGNATURE_INVALID";
    case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
    case CKR_CRYPTOKI_NOT_INITIALIZED: return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED: return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
    case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
    default: snprintf(other, sizeof other, "0x%lx", (unsigned long)rv); return other;
    }
}

static int check_rv(const char *what, CK_RV got, CK_RV want)
{
    if (got == want)
        return check(1, "%s -> %s", what, rv_name(got));
    return check(0, "%s: expected %s, got %s", what, rv_name(want), rv_name(got));
}

static CK_FUNCTION_LIST_PTR F;
static const char *label, *pin;

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

static int find_slot(CK_SLOT_ID *out)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    if (F->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return 0;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_matches(ti.label, label)) {
            *out = slots[i];
            return 1;
        }
    }
    return 0;
}

static char aes_label[] = "fork-aes";

static CK_RV make_aes_key(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *key)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG klen = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_VALUE_LEN, &klen, sizeof klen}, {CKA_TOKEN, &no, sizeof no},
        {CKA_ENCRYPT, &yes, sizeof yes},   {CKA_DECRYPT, &yes, sizeof yes},
        {CKA_LABEL, aes_label, sizeof aes_label - 1},
    };
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    return F->C_GenerateKey(h, &keygen, tmpl, sizeof tmpl / sizeof tmpl[0], key);
}

static CK_RV make_hmac_key(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *key)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG klen = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_VALUE_LEN, &klen, sizeof klen}, {CKA_TOKEN, &no, sizeof no},
        {CKA_SIGN, &yes, sizeof yes},      {CKA_VERIFY, &yes, sizeof yes},
    };
    CK_MECHANISM keygen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    return F->C_GenerateKey(h, &keygen, tmpl, sizeof tmpl / sizeof tmpl[0], key);
}

static CK_RV make_ec_pair(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
    /* DER of the OID 1.2.840.10045.3.1.7 (P-256). */
    static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE pub_tmpl[] = {
        {CKA_TOKEN, &no, sizeof no},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_EC_PARAMS, p256, sizeof p256},
    };
    CK_ATTRIBUTE priv_tmpl[] = {
        {CKA_TOKEN, &no, sizeof no},
        {CKA_SIGN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
    };
    CK_MECHANISM keygen = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    return F->C_GenerateKeyPair(h, &keygen, pub_tmpl, sizeof pub_tmpl / sizeof pub_tmpl[0],
                                priv_tmpl, sizeof priv_tmpl / sizeof priv_tmpl[0], pub, priv);
}

static CK_BYTE iv[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const CK_BYTE plain[40] = "fork test plaintext, forty bytes long...";

/* ---------------------------------------------------------------------------------------------- */
/* Worker threads (parent)                                                                        */
/* ---------------------------------------------------------------------------------------------- */

struct worker {
    pthread_t tid;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE aes, hmac, ec;
    atomic_int inside;        /* 1 from just before a call until just after it returns */
    atomic_ulong iterations;
    atomic_ulong failures;
    CK_RV first_rv;           /* written once, before failures is first incremented */
    const char *first_fn;
};

static atomic_int stop;

static void record_failure(struct worker *w, const char *fn, CK_RV rv)
{
    if (atomic_load(&w->failures) == 0) {
        w->first_fn = fn;
        w->first_rv = rv;
    }
    atomic_fetch_add(&w->failures, 1);
}

/* Calls EXPR with the worker marked inside the module; a result other than CKR_OK is recorded. */
#define CALL(w, name, expr)                                                                       \
    ({                                                                                            \
        atomic_store(&(w)->inside, 1);                                                            \
        CK_RV rv_ = (expr);                                                                       \
        atomic_store(&(w)->inside, 0);                                                            \
        if (rv_ != CKR_OK)                                                                        \
            record_failure((w), (name), rv_);                                                     \
        rv_;                                                                                      \
    })

static void expect_length(struct worker *w, const char *what, CK_ULONG got, CK_ULONG want)
{
    if (got != want)
        record_failure(w, what, CKR_GENERAL_ERROR);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_MECHANISM hmac = {CKM_SHA256_HMAC, NULL, 0};
    CK_MECHANISM sha256 = {CKM_SHA256, NULL, 0};
    CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
    CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
    CK_ATTRIBUTE find_tmpl[] = {
        {CKA_CLASS, &secret, sizeof secret},
        {CKA_LABEL, aes_label, sizeof aes_label - 1},
    };
    CK_BYTE rnd[16], ct[64], mac[32], digest[32], sig[64];
    CK_ULONG len;
    CK_SESSION_HANDLE other;
    CK_OBJECT_HANDLE found[4];
    CK_ULONG nfound;

    for (unsigned long round = 0; !atomic_load(&stop); round++) {
        CALL(w, "C_GenerateRandom", F->C_GenerateRandom(w->h, rnd, sizeof rnd));

        if (CALL(w, "C_EncryptInit", F->C_EncryptInit(w->h, &cbc, w->aes)) == CKR_OK) {
            len = sizeof ct;
            if (CALL(w, "C_Encrypt", F->C_Encrypt(w->h, (CK_BYTE_PTR)plain, sizeof plain, ct,
                                                  &len)) == CKR_OK)
                expect_length(w, "C_Encrypt (length)", len, 48);
        }

        if (CALL(w, "C_SignInit(HMAC)", F->C_SignInit(w->h, &hmac, w->hmac)) == CKR_OK) {
            len = sizeof mac;
            if (CALL(w, "C_Sign(HMAC)", F->C_Sign(w->h, (CK_BYTE_PTR)plain, sizeof plain, mac,
                                                  &len)) == CKR_OK) {
                expect_length(w, "C_Sign(HMAC) (length)", len, 32);
                if (CALL(w, "C_VerifyInit(HMAC)", F->C_VerifyInit(w->h, &hmac, w->hmac)) == CKR_OK)
                    CALL(w, "C_Verify(HMAC)",
                         F->C_Verify(w->h, (CK_BYTE_PTR)plain, sizeof plain, mac, len));
            }
        }

        if (CALL(w, "C_DigestInit", F->C_DigestInit(w->h, &sha256)) == CKR_OK) {
            len = sizeof digest;
            if (CALL(w, "C_Digest", F->C_Digest(w->h, (CK_BYTE_PTR)plain, sizeof plain, digest,
                                                &len)) == CKR_OK) {
                expect_length(w, "C_Digest (length)", len, 32);
                if (CALL(w, "C_SignInit(ECDSA)", F->C_SignInit(w->h, &ecdsa, w->ec)) == CKR_OK) {
                    len = sizeof sig;
                    if (CALL(w, "C_Sign(ECDSA)",
                             F->C_Sign(w->h, digest, sizeof digest, sig, &len)) == CKR_OK)
                        expect_length(w, "C_Sign(ECDSA) (length)", len, 64);
                }
            }
        }

        if (round % 16 == 0 &&
            CALL(w, "C_OpenSession", F->C_OpenSession(w->slot, CKF_SERIAL_SESSION, NULL, NULL,
                                                      &other)) == CKR_OK) {
            if (CALL(w, "C_FindObjectsInit",
                     F->C_FindObjectsInit(other, find_tmpl, 2)) == CKR_OK) {
                nfound = 0;
                if (CALL(w, "C_FindObjects", F->C_FindObjects(other, found, 4, &nfound)) == CKR_OK)
                    expect_length(w, "C_FindObjects (count)", nfound, 1);
                CALL(w, "C_FindObjectsFinal", F->C_FindObjectsFinal(other));
            }
            CALL(w, "C_CloseSession", F->C_CloseSession(other));
        }
        atomic_fetch_add(&w->iterations, 1);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Child                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

static void child(CK_SLOT_ID parent_slot, CK_SESSION_HANDLE old_main, CK_SESSION_HANDLE old_worker)
{
    CK_ULONG n = 0;
    CK_SESSION_HANDLE h = 0;
    CK_SESSION_INFO si;
    CK_INFO ci;
    CK_BYTE rnd[32], ct[64], back[64];
    CK_ULONG ctlen, backlen;
    CK_OBJECT_HANDLE key = 0;
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_C_INITIALIZE_ARGS a;
    CK_SLOT_ID slot = 0;
    CK_RV rv;

    prefix = "child: ";
    passed = failed = 0;
    alarm(CHILD_TIMEOUT_SECONDS); /* a deadlock in the child must not hang the test */

    /* Nothing works before the child's own C_Initialize. */
    check_rv("C_GetSlotList before C_Initialize", F->C_GetSlotList(CK_TRUE, NULL, &n),
             CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_OpenSession before C_Initialize",
             F->C_OpenSession(parent_slot, CKF_SERIAL_SESSION, NULL, NULL, &h),
             CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_GetSessionInfo(parent's session) before C_Initialize",
             F->C_GetSessionInfo(old_main, &si), CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_GenerateRandom(parent's worker session) before C_Initialize",
             F->C_GenerateRandom(old_worker, rnd, 16), CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_GetInfo before C_Initialize", F->C_GetInfo(&ci), CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_Finalize before C_Initialize", F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

    /* The child's own C_Initialize works. */
    memset(&a, 0, sizeof a);
    a.flags = CKF_OS_LOCKING_OK;
    if (!check_rv("C_Initialize(CKF_OS_LOCKING_OK)", F->C_Initialize(&a), CKR_OK))
        goto out;
    check_rv("C_GetInfo", F->C_GetInfo(&ci), CKR_OK);
    if (!check(find_slot(&slot), "token \"%s\" found", label))
        goto finalize;
    if (!check_rv("C_OpenSession(RW)",
                  F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h),
                  CKR_OK))
        goto finalize;
    rv = F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin));
    if (!check_rv("C_Login(user PIN)", rv, CKR_OK))
        goto close;
    if (check_rv("C_GetSessionInfo", F->C_GetSessionInfo(h, &si), CKR_OK))
        check(si.state == CKS_RW_USER_FUNCTIONS, "session state is CKS_RW_USER_FUNCTIONS (%lu)",
              (unsigned long)si.state);
    check_rv("C_GenerateRandom(32)", F->C_GenerateRandom(h, rnd, sizeof rnd), CKR_OK);
    if (check_rv("C_GenerateKey(AES 256)", make_aes_key(h, &key), CKR_OK)) {
        ctlen = sizeof ct;
        backlen = sizeof back;
        check_rv("C_EncryptInit(AES-CBC-PAD)", F->C_EncryptInit(h, &cbc, key), CKR_OK);
        check_rv("C_Encrypt", F->C_Encrypt(h, (CK_BYTE_PTR)plain, sizeof plain, ct, &ctlen),
                 CKR_OK);
        check_rv("C_DecryptInit(AES-CBC-PAD)", F->C_DecryptInit(h, &cbc, key), CKR_OK);
        check_rv("C_Decrypt", F->C_Decrypt(h, ct, ctlen, back, &backlen), CKR_OK);
        check(backlen == sizeof plain && memcmp(back, plain, sizeof plain) == 0,
              "decrypted text equals the plaintext");
    }
    check_rv("C_Logout", F->C_Logout(h), CKR_OK);
close:
    check_rv("C_CloseSession", F->C_CloseSession(h), CKR_OK);
finalize:
    check_rv("C_Finalize", F->C_Finalize(NULL), CKR_OK);
out:
    printf("child: %u passed, %u failed\n", passed, failed);
    fflush(stdout);
    exit(failed ? 1 : 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Parent                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* Waits (up to 10 s) until every worker did `more` iterations beyond `since`. */
static int workers_progressed(struct worker *w, const unsigned long *since, unsigned long more)
{
    for (int waited_ms = 0;; waited_ms++) {
        int all = 1;
        for (int i = 0; i < THREADS; i++)
            if (atomic_load(&w[i].iterations) < since[i] + more)
                all = 0;
        if (all)
            return 1;
        if (waited_ms >= 10000)
            return 0;
        sleep_us(1000);
    }
}

/* Waits for the child; returns its status as text ("" when it exited with 0). */
static const char *wait_child(pid_t pid)
{
    static char why[96];
    int status = 0;
    for (int ms = 0; ms < (CHILD_TIMEOUT_SECONDS + 10) * 1000; ms += 2) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            if (WIFSIGNALED(status))
                snprintf(why, sizeof why, "killed by signal %d%s", WTERMSIG(status),
                         WTERMSIG(status) == SIGALRM ? ": timed out, probably a deadlock" : "");
            else if (WEXITSTATUS(status) != 0)
                snprintf(why, sizeof why, "exit status %d", WEXITSTATUS(status));
            else
                why[0] = 0;
            return why;
        }
        if (r < 0 && errno != EINTR) {
            snprintf(why, sizeof why, "waitpid: %s", strerror(errno));
            return why;
        }
        sleep_us(2000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    snprintf(why, sizeof why, "did not finish within %d s (killed)", CHILD_TIMEOUT_SECONDS + 10);
    return why;
}

/* Spins (up to 1 s) until some worker is inside a call; returns whether one was. */
static int a_worker_is_inside(struct worker *w)
{
    for (long spins = 0; spins < 1000000; spins++) {
        for (int i = 0; i < THREADS; i++)
            if (atomic_load(&w[i].inside))
                return 1;
        if (spins % 1000 == 999)
            sleep_us(1);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int c, forks = 1, threads_started = 0, forked = 0, inside_at_fork = 0;
    void *module;
    CK_C_GetFunctionList gfl;
    CK_C_INITIALIZE_ARGS a;
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE main_h = 0;
    CK_SESSION_INFO si;
    CK_INFO ci;
    CK_OBJECT_HANDLE aes = 0, hmac = 0, ec_pub = 0, ec_priv = 0;
    struct worker workers[THREADS];
    unsigned long before[THREADS], start_iterations[THREADS];
    pid_t pid;

    while ((c = getopt(argc, argv, "l:p:n:")) != -1) {
        switch (c) {
        case 'l': label = optarg; break;
        case 'p': pin = optarg; break;
        case 'n': forks = atoi(optarg); break;
        default: goto usage;
        }
    }
    if (!pin)
        pin = getenv("P11_USER_PIN");
    if (optind + 1 != argc || !label || !pin || forks < 1)
        goto usage;
    srand((unsigned)getpid());

    module = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
    if (!check(module != NULL, "dlopen %s", argv[optind]))
        goto done;
    gfl = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (!check(gfl != NULL, "C_GetFunctionList is exported") ||
        !check_rv("C_GetFunctionList", gfl(&F), CKR_OK))
        goto done;

    memset(&a, 0, sizeof a);
    a.flags = CKF_OS_LOCKING_OK;
    if (!check_rv("C_Initialize(CKF_OS_LOCKING_OK)", F->C_Initialize(&a), CKR_OK))
        goto done;
    if (!check(find_slot(&slot), "token \"%s\" found", label))
        goto finalize;
    if (!check_rv("C_OpenSession(main)",
                  F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &main_h),
                  CKR_OK))
        goto finalize;
    if (!check_rv("C_Login(user PIN)",
                  F->C_Login(main_h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)),
                  CKR_OK))
        goto finalize;
    if (!check_rv("C_GenerateKey(AES 256)", make_aes_key(main_h, &aes), CKR_OK) ||
        !check_rv("C_GenerateKey(HMAC secret)", make_hmac_key(main_h, &hmac), CKR_OK) ||
        !check_rv("C_GenerateKeyPair(EC P-256)", make_ec_pair(main_h, &ec_pub, &ec_priv), CKR_OK))
        goto finalize;

    memset(workers, 0, sizeof workers);
    for (int i = 0; i < THREADS; i++) {
        char what[64];
        workers[i].slot = slot;
        workers[i].aes = aes;
        workers[i].hmac = hmac;
        workers[i].ec = ec_priv;
        snprintf(what, sizeof what, "C_OpenSession(worker %d)", i);
        if (!check_rv(what, F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &workers[i].h),
                      CKR_OK))
            goto finalize;
    }
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) != 0) {
            check(0, "pthread_create(worker %d)", i);
            atomic_store(&stop, 1);
            for (int j = 0; j < i; j++)
                pthread_join(workers[j].tid, NULL);
            goto finalize;
        }
    }
    threads_started = 1;

    memset(before, 0, sizeof before);
    check(workers_progressed(workers, before, WARMUP_ITERATIONS),
          "every worker did %d iterations before the first fork", WARMUP_ITERATIONS);
    for (int i = 0; i < THREADS; i++)
        start_iterations[i] = atomic_load(&workers[i].iterations);

    /* Fork while the workers run; each child is checked before the next fork. */
    for (int f = 1; f <= forks; f++) {
        const char *why;
        /* A varying moment, then right after a worker was seen inside a call. */
        sleep_us(rand() % 3000);
        inside_at_fork += a_worker_is_inside(workers);
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            if (f > 1)
                verbose = 0;
            child(slot, main_h, workers[0].h); /* does not return */
        }
        verbose = f == 1;
        if (!check(pid > 0, "fork %d", f)) {
            verbose = 1;
            break;
        }
        forked++;
        for (int i = 0; i < THREADS; i++)
            before[i] = atomic_load(&workers[i].iterations);
        why = wait_child(pid);
        check(why[0] == 0, "child %d exited with status 0%s%s", f, why[0] ? ": " : "", why);
        /* The parent is unaffected: every worker keeps going. */
        check(workers_progressed(workers, before, PROGRESS_PER_FORK),
              "every worker did %d more iterations after fork %d", PROGRESS_PER_FORK, f);
        verbose = 1;
    }
    check(forked == forks, "forked %d times (of %d)", forked, forks);
    check(inside_at_fork == forked, "fork() was called with a worker inside the module %d times "
                                    "(of %d)", inside_at_fork, forked);
    for (int i = 0; i < THREADS; i++)
        check(atomic_load(&workers[i].iterations) >= start_iterations[i] +
                  (unsigned long)forked * PROGRESS_PER_FORK,
              "worker %d kept working during the forks (%lu -> %lu iterations)", i,
              start_iterations[i], atomic_load(&workers[i].iterations));
    check_rv("C_GetInfo in the parent after the forks", F->C_GetInfo(&ci), CKR_OK);
    if (check_rv("C_GetSessionInfo(main) in the parent", F->C_GetSessionInfo(main_h, &si), CKR_OK))
        check(si.state == CKS_RW_USER_FUNCTIONS,
              "the parent is still logged in (state %lu)", (unsigned long)si.state);

    atomic_store(&stop, 1);
    if (threads_started) {
        for (int i = 0; i < THREADS; i++)
            pthread_join(workers[i].tid, NULL);
        for (int i = 0; i < THREADS; i++) {
            unsigned long f = atomic_load(&workers[i].failures);
            if (f == 0)
                check(1, "worker %d: %lu iterations, no call failed", i,
                      atomic_load(&workers[i].iterations));
            else
                check(0, "worker %d: %lu of %lu iterations failed, first %s -> %s", i, f,
                      atomic_load(&workers[i].iterations), workers[i].first_fn,
                      rv_name(workers[i].first_rv));
        }
        for (int i = 0; i < THREADS; i++) {
            char what[64];
            snprintf(what, sizeof what, "C_CloseSession(worker %d)", i);
            check_rv(what, F->C_CloseSession(workers[i].h), CKR_OK);
        }
    }
    check_rv("C_Logout", F->C_Logout(main_h), CKR_OK);
    check_rv("C_CloseSession(main)", F->C_CloseSession(main_h), CKR_OK);
finalize:
    check_rv("C_Finalize", F->C_Finalize(NULL), CKR_OK);
done:
    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
usage:
    fprintf(stderr, "usage: %s [-l LABEL] [-p PIN] [-n FORKS] MODULE.so\n", argv[0]);
    return 2;
}
