/*
 * fork.c - fork() while worker threads are running sessions on the module.
 *
 * usage: fork [-l LABEL] [-p PIN] MODULE.so        (PIN default: $P11_USER_PIN)
 *
 * The parent initialises the module, logs in, and starts four threads that each loop over
 * C_GenerateRandom and a single-part AES-CBC-PAD C_EncryptInit/C_Encrypt on a session of their own.
 * While they run it forks; the workers are held between two calls for the moment of the fork.
 * A thread inside the upstream at that moment can hold the upstream's own locks: SoftHSMv2's
 * OpenSSL takes its RNG lock in RAND_bytes, a lock no PKCS#11 mutex callback governs, and the
 * child inherits it locked (a hang in roughly one run in twenty under load). Forking while calls
 * are in flight needs a fork barrier in p11gate (the reliability issue); this test checks what
 * the core promises: the child is not initialised until it calls C_Initialize, which then works. The child must see CKR_CRYPTOKI_NOT_INITIALIZED from every call (slot
 * list, open session, the parent's session handles) until it calls C_Initialize itself, which must
 * then work: it finds the token, opens a session, logs in, draws random bytes, encrypts and
 * decrypts, and finalises. The parent waits for the child, checks that its own threads kept working
 * during and after the fork and that none of their calls failed, and finalises.
 *
 * Both processes print one line per check; each ends with "N passed, N failed" (the child's line
 * is prefixed "child:"). The exit status is 1 when any check, in either process, failed.
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
#define CHILD_TIMEOUT_SECONDS 60

static unsigned passed, failed;
static const char *prefix = "";

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    va_list ap;
    printf("%s%s", prefix, ok ? "ok   - " : "FAIL - ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    if (ok)
        passed++;
    else
        failed++;
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
    case CKR_OPERATION_ACTIVE: return "CKR_OPERATION_ACTIVE";
    case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
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
    };
    CK_MECHANISM keygen = {CKM_AES_KEY_GEN, NULL, 0};
    return F->C_GenerateKey(h, &keygen, tmpl, sizeof tmpl / sizeof tmpl[0], key);
}

static CK_BYTE iv[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const CK_BYTE plain[40] = "fork test plaintext, forty bytes long...";

/* ---------------------------------------------------------------------------------------------- */
/* Worker threads (parent)                                                                        */
/* ---------------------------------------------------------------------------------------------- */

struct worker {
    pthread_t tid;
    int idx;
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE key;
    atomic_ulong iterations;
    atomic_ulong failures;
    CK_RV first_rv;           /* written once, before failures is first incremented */
    const char *first_fn;
};

static atomic_int stop;
/* The main thread asks the workers to wait between calls (pause) around fork(). */
static atomic_int pause_requested, paused;

static void record_failure(struct worker *w, const char *fn, CK_RV rv)
{
    if (atomic_load(&w->failures) == 0) {
        w->first_fn = fn;
        w->first_rv = rv;
    }
    atomic_fetch_add(&w->failures, 1);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_BYTE rnd[16], ct[64];
    CK_ULONG ctlen;
    CK_RV rv;

    while (!atomic_load(&stop)) {
        if (atomic_load(&pause_requested)) {
            atomic_fetch_add(&paused, 1);
            while (atomic_load(&pause_requested) && !atomic_load(&stop))
                sched_yield();
            atomic_fetch_sub(&paused, 1);
        }
        rv = F->C_GenerateRandom(w->h, rnd, sizeof rnd);
        if (rv != CKR_OK)
            record_failure(w, "C_GenerateRandom", rv);
        rv = F->C_EncryptInit(w->h, &cbc, w->key);
        if (rv != CKR_OK) {
            record_failure(w, "C_EncryptInit", rv);
        } else {
            ctlen = sizeof ct;
            rv = F->C_Encrypt(w->h, (CK_BYTE_PTR)plain, sizeof plain, ct, &ctlen);
            if (rv != CKR_OK)
                record_failure(w, "C_Encrypt", rv);
            else if (ctlen != 48)
                record_failure(w, "C_Encrypt (length)", CKR_GENERAL_ERROR);
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

static unsigned long min_iterations(struct worker *w)
{
    unsigned long m = (unsigned long)-1;
    for (int i = 0; i < THREADS; i++) {
        unsigned long it = atomic_load(&w[i].iterations);
        if (it < m)
            m = it;
    }
    return m;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    int c, status = 0, threads_started = 0;
    void *module;
    CK_C_GetFunctionList gfl;
    CK_C_INITIALIZE_ARGS a;
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE main_h = 0;
    CK_SESSION_INFO si;
    CK_INFO ci;
    CK_OBJECT_HANDLE key = 0;
    struct worker workers[THREADS];
    unsigned long at_fork[THREADS];
    pid_t pid;
    int waited;

    while ((c = getopt(argc, argv, "l:p:")) != -1) {
        switch (c) {
        case 'l': label = optarg; break;
        case 'p': pin = optarg; break;
        default: goto usage;
        }
    }
    if (!pin)
        pin = getenv("P11_USER_PIN");
    if (optind + 1 != argc || !label || !pin)
        goto usage;

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
    if (!check_rv("C_GenerateKey(AES 256)", make_aes_key(main_h, &key), CKR_OK))
        goto finalize;

    memset(workers, 0, sizeof workers);
    for (int i = 0; i < THREADS; i++) {
        char what[64];
        workers[i].idx = i;
        workers[i].key = key;
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

    /* Let every worker get going, then fork while they are inside the module. */
    for (int waited_ms = 0; min_iterations(workers) < WARMUP_ITERATIONS && waited_ms < 30000;
         waited_ms += 10)
        sleep_ms(10);
    check(min_iterations(workers) >= WARMUP_ITERATIONS,
          "every worker did %d iterations before the fork (min %lu)", WARMUP_ITERATIONS,
          min_iterations(workers));

    fflush(stdout);
    atomic_store(&pause_requested, 1);
    while (atomic_load(&paused) < THREADS)
        sched_yield();
    pid = fork();
    if (pid == 0)
        child(slot, main_h, workers[0].h); /* does not return */
    atomic_store(&pause_requested, 0);
    if (!check(pid > 0, "fork"))
        goto stop_threads;
    for (int i = 0; i < THREADS; i++)
        at_fork[i] = atomic_load(&workers[i].iterations);

    /* Wait for the child (it has its own alarm; this is a second guard). */
    waited = 0;
    for (int ms = 0; ms < (CHILD_TIMEOUT_SECONDS + 10) * 1000; ms += 20) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            waited = 1;
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
        sleep_ms(20);
    }
    if (!waited) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        check(0, "child finished within %d s (killed)", CHILD_TIMEOUT_SECONDS + 10);
    } else if (WIFSIGNALED(status)) {
        check(0, "child exited normally (killed by signal %d%s)", WTERMSIG(status),
              WTERMSIG(status) == SIGALRM ? ": timed out, probably a deadlock" : "");
    } else {
        check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child exited with status 0 (got %d)",
              WEXITSTATUS(status));
    }

    /* The parent is unaffected: its workers keep going and it can still use its sessions. */
    for (int waited_ms = 0; waited_ms < 10000; waited_ms += 10) {
        int all = 1;
        for (int i = 0; i < THREADS; i++)
            if (atomic_load(&workers[i].iterations) < at_fork[i] + WARMUP_ITERATIONS)
                all = 0;
        if (all)
            break;
        sleep_ms(10);
    }
    for (int i = 0; i < THREADS; i++)
        check(atomic_load(&workers[i].iterations) >= at_fork[i] + WARMUP_ITERATIONS,
              "worker %d kept working after the fork (%lu -> %lu iterations)", i, at_fork[i],
              atomic_load(&workers[i].iterations));
    check_rv("C_GetInfo in the parent after the fork", F->C_GetInfo(&ci), CKR_OK);
    if (check_rv("C_GetSessionInfo(main) in the parent", F->C_GetSessionInfo(main_h, &si), CKR_OK))
        check(si.state == CKS_RW_USER_FUNCTIONS,
              "the parent is still logged in (state %lu)", (unsigned long)si.state);

stop_threads:
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
    fprintf(stderr, "usage: %s [-l LABEL] [-p PIN] MODULE.so\n", argv[0]);
    return 2;
}
