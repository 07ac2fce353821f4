/*
 * client.c - a plain C PKCS#11 application that loads a module with dlopen and checks it the way
 * the p11gate contract describes (see include/p11gate.h). It prints one line per check
 * ("ok - ..." or "FAIL - ...: expected X, got Y") and ends with "N passed, N failed"; the exit
 * status is 1 when any check failed.
 *
 * usage: client [-g] [-I 0|2|3] [-U] [-n] [-l LABEL] [-p PIN] MODULE.so
 *   -g        the module is p11gate: also run the checks specific to p11gate (manufacturerID,
 *             the 24 PKCS#11 3.0 exports: CKR_CRYPTOKI_NOT_INITIALIZED before C_Initialize and,
 *             with a 2.40-only upstream, CKR_FUNCTION_NOT_SUPPORTED after it). Every other check,
 *             NULL-argument refusals included, holds for a plain module such as SoftHSMv2 too.
 *   -I 0      the module exports no C_GetInterfaceList (e.g. SoftHSMv2 2.6 loaded directly)
 *   -I 2      it offers only the "PKCS 11" 2.40 interface (default)
 *   -I 3      it offers "PKCS 11" 2.40 and 3.0
 *   -U        the module's upstream cannot be loaded: C_Initialize must fail with
 *             CKR_GENERAL_ERROR and leave the module uninitialised (only the lifecycle is checked)
 *   -n        the module has no token to work with (e.g. OpenSC without a reader): after the
 *             interface and before-C_Initialize checks, only C_Initialize / C_GetInfo /
 *             C_GetSlotList / C_Finalize are exercised, plus, when 3.0 is offered, the 3.0 functions
 *             on an unknown session handle (CKR_SESSION_HANDLE_INVALID)
 *   -l LABEL  label of an initialised token with a user PIN (required without -U and -n)
 *   -p PIN    its user PIN; default: the environment variable P11_USER_PIN
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

/* ---------------------------------------------------------------------------------------------- */
/* Reporting                                                                                      */
/* ---------------------------------------------------------------------------------------------- */

static unsigned passed, failed;

static const char *rv_name(CK_RV rv)
{
    switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_HOST_MEMORY: return "CKR_HOST_MEMORY";
    case CKR_SLOT_ID_INVALID: return "CKR_SLOT_ID_INVALID";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
    case CKR_NEED_TO_CREATE_THREADS: return "CKR_NEED_TO_CREATE_THREADS";
    case CKR_CANT_LOCK: return "CKR_CANT_LOCK";
    case CKR_FUNCTION_NOT_PARALLEL: return "CKR_FUNCTION_NOT_PARALLEL";
    case CKR_FUNCTION_NOT_SUPPORTED: return "CKR_FUNCTION_NOT_SUPPORTED";
    case CKR_KEY_HANDLE_INVALID: return "CKR_KEY_HANDLE_INVALID";
    case CKR_MECHANISM_INVALID: return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID: return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_OBJECT_HANDLE_INVALID: return "CKR_OBJECT_HANDLE_INVALID";
    case CKR_OPERATION_ACTIVE: return "CKR_OPERATION_ACTIVE";
    case CKR_OPERATION_NOT_INITIALIZED: return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
    case CKR_PIN_LEN_RANGE: return "CKR_PIN_LEN_RANGE";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SESSION_PARALLEL_NOT_SUPPORTED: return "CKR_SESSION_PARALLEL_NOT_SUPPORTED";
    case CKR_TEMPLATE_INCOMPLETE: return "CKR_TEMPLATE_INCOMPLETE";
    case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
    case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_USER_NOT_LOGGED_IN: return "CKR_USER_NOT_LOGGED_IN";
    case CKR_USER_TYPE_INVALID: return "CKR_USER_TYPE_INVALID";
    case CKR_BUFFER_TOO_SMALL: return "CKR_BUFFER_TOO_SMALL";
    case CKR_CRYPTOKI_NOT_INITIALIZED: return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED: return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    case CKR_MUTEX_BAD: return "CKR_MUTEX_BAD";
    case CKR_MUTEX_NOT_LOCKED: return "CKR_MUTEX_NOT_LOCKED";
    default: return NULL;
    }
}

static void print_rv(char *buf, size_t size, CK_RV rv)
{
    const char *name = rv_name(rv);
    if (name)
        snprintf(buf, size, "%s", name);
    else
        snprintf(buf, size, "0x%lx", (unsigned long)rv);
}

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    va_list ap;
    printf(ok ? "ok   - " : "FAIL - ");
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

/* One check on a return value: prints the call, what was expected and what came back. */
static int check_rv(const char *what, CK_RV got, CK_RV want)
{
    char g[48], w[48];
    print_rv(g, sizeof g, got);
    print_rv(w, sizeof w, want);
    if (got == want)
        return check(1, "%s -> %s", what, g);
    return check(0, "%s: expected %s, got %s", what, w, g);
}

static void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void info(const char *fmt, ...)
{
    va_list ap;
    printf("info - ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* ---------------------------------------------------------------------------------------------- */
/* Options and module                                                                             */
/* ---------------------------------------------------------------------------------------------- */

static int gate_mode;          /* -g */
static int iface_expect = 2;   /* -I */
static int upstream_missing;   /* -U */
static int no_token;           /* -n */
static const char *label;      /* -l */
static const char *pin;        /* -p or $P11_USER_PIN */
static const char *module_path;

static void *module;
static CK_FUNCTION_LIST_PTR F;        /* from C_GetFunctionList */
static CK_FUNCTION_LIST_3_0_PTR F3;   /* from C_GetInterface("PKCS 11", 3.0), if offered */

#define BOGUS_SESSION ((CK_SESSION_HANDLE)0x7eadbeefUL)
#define BOGUS_SLOT ((CK_SLOT_ID)0x7ffffff0UL)

/* The names of the 24 functions PKCS#11 3.0 added, in function-list order. */
static const char *const names_3_0[24] = {
    "C_GetInterfaceList", "C_GetInterface", "C_LoginUser", "C_SessionCancel",
    "C_MessageEncryptInit", "C_EncryptMessage", "C_EncryptMessageBegin", "C_EncryptMessageNext",
    "C_MessageEncryptFinal", "C_MessageDecryptInit", "C_DecryptMessage", "C_DecryptMessageBegin",
    "C_DecryptMessageNext", "C_MessageDecryptFinal", "C_MessageSignInit", "C_SignMessage",
    "C_SignMessageBegin", "C_SignMessageNext", "C_MessageSignFinal", "C_MessageVerifyInit",
    "C_VerifyMessage", "C_VerifyMessageBegin", "C_VerifyMessageNext", "C_MessageVerifyFinal",
};

/* Is this address inside the loaded module (not inside its upstream or elsewhere)? */
static int in_module(const void *addr)
{
    Dl_info mine, that;
    void *anchor = dlsym(module, "C_GetFunctionList");
    if (!anchor || !addr || !dladdr(anchor, &mine) || !dladdr(addr, &that))
        return 0;
    return mine.dli_fbase == that.dli_fbase;
}

/* Every entry of a function table (a CK_VERSION followed by n function pointers) is set, and the
 * table and its entries live in the loaded module itself (for p11gate: never in its upstream). */
static void check_table(const char *what, const void *table, size_t n)
{
    const CK_FUNCTION_LIST *l = table;
    void (*const *fns)(void) = (void (*const *)(void))(&l->C_Initialize);
    size_t missing = 0, foreign = 0;
    for (size_t i = 0; i < n; i++) {
        void *p;
        memcpy(&p, &fns[i], sizeof p);
        if (!p)
            missing++;
        else if (!in_module(p))
            foreign++;
    }
    check(missing == 0, "%s: all %zu entries set (%zu NULL)", what, n, missing);
    check(in_module(table), "%s: the table itself lives in the module, not in the upstream",
          what);
    check(foreign == 0, "%s: every entry points into the module (%zu point elsewhere)", what,
          foreign);
}

/* ---------------------------------------------------------------------------------------------- */
/* Application mutex callbacks (pthread based, with misuse detection)                             */
/* ---------------------------------------------------------------------------------------------- */

#define MUTEX_MAGIC 0x6d757478u

struct app_mutex {
    unsigned magic;
    int locked;
    pthread_mutex_t m;
};

static pthread_mutex_t counters_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long n_created, n_destroyed, n_locks, n_misuse;

static void count(unsigned long *c)
{
    pthread_mutex_lock(&counters_lock);
    (*c)++;
    pthread_mutex_unlock(&counters_lock);
}

static CK_RV app_create(void **out)
{
    struct app_mutex *am;
    if (!out) {
        count(&n_misuse);
        return CKR_ARGUMENTS_BAD;
    }
    am = calloc(1, sizeof *am);
    if (!am)
        return CKR_HOST_MEMORY;
    am->magic = MUTEX_MAGIC;
    pthread_mutex_init(&am->m, NULL);
    *out = am;
    count(&n_created);
    return CKR_OK;
}

static CK_RV app_destroy(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC) {
        count(&n_misuse);
        return CKR_MUTEX_BAD;
    }
    if (am->locked)
        count(&n_misuse);
    am->magic = 0;
    pthread_mutex_destroy(&am->m);
    free(am);
    count(&n_destroyed);
    return CKR_OK;
}

static CK_RV app_lock(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC) {
        count(&n_misuse);
        return CKR_MUTEX_BAD;
    }
    pthread_mutex_lock(&am->m);
    am->locked = 1;
    count(&n_locks);
    return CKR_OK;
}

static CK_RV app_unlock(void *mutex)
{
    struct app_mutex *am = mutex;
    if (!am || am->magic != MUTEX_MAGIC) {
        count(&n_misuse);
        return CKR_MUTEX_BAD;
    }
    if (!am->locked) {
        count(&n_misuse);
        return CKR_MUTEX_NOT_LOCKED;
    }
    am->locked = 0;
    pthread_mutex_unlock(&am->m);
    return CKR_OK;
}

static CK_C_INITIALIZE_ARGS init_args(CK_FLAGS flags, int with_callbacks)
{
    CK_C_INITIALIZE_ARGS a;
    memset(&a, 0, sizeof a);
    a.flags = flags;
    if (with_callbacks) {
        a.CreateMutex = app_create;
        a.DestroyMutex = app_destroy;
        a.LockMutex = app_lock;
        a.UnlockMutex = app_unlock;
    }
    return a;
}

/* ---------------------------------------------------------------------------------------------- */
/* Token helpers                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

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

/* The slot whose token carries `label`, or BOGUS_SLOT. */
static CK_SLOT_ID find_slot(void)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CK_RV rv = F->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK)
        return BOGUS_SLOT;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_matches(ti.label, label))
            return slots[i];
    }
    return BOGUS_SLOT;
}

/* A short exercise used after each C_Initialize form: open a session, draw random bytes, close. */
static void exercise(const char *form)
{
    char what[160];
    CK_SLOT_ID slot = find_slot();
    CK_SESSION_HANDLE h = 0;
    CK_BYTE rnd[16];
    CK_RV rv;

    snprintf(what, sizeof what, "[%s] token \"%s\" found", form, label);
    if (!check(slot != BOGUS_SLOT, "%s", what))
        return;
    rv = F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
    snprintf(what, sizeof what, "[%s] C_OpenSession", form);
    if (!check_rv(what, rv, CKR_OK))
        return;
    snprintf(what, sizeof what, "[%s] C_GenerateRandom(16)", form);
    check_rv(what, F->C_GenerateRandom(h, rnd, sizeof rnd), CKR_OK);
    snprintf(what, sizeof what, "[%s] C_CloseSession", form);
    check_rv(what, F->C_CloseSession(h), CKR_OK);
}

/* ---------------------------------------------------------------------------------------------- */
/* 1. Loading, C_GetFunctionList                                                                  */
/* ---------------------------------------------------------------------------------------------- */

static int load(void)
{
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR again = NULL;

    module = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
    if (!check(module != NULL, "dlopen %s%s%s", module_path, module ? "" : ": ",
               module ? "" : dlerror()))
        return 0;
    gfl = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (!check(gfl != NULL, "C_GetFunctionList is exported"))
        return 0;
    check_rv("C_GetFunctionList(NULL)", gfl(NULL), CKR_ARGUMENTS_BAD);
    if (!check_rv("C_GetFunctionList(&list) before C_Initialize", gfl(&F), CKR_OK) || !F)
        return 0;
    check(F->version.major == 2 && F->version.minor == 40,
          "C_GetFunctionList list version is 2.40 (got %u.%u)", F->version.major,
          F->version.minor);
    check(gfl(&again) == CKR_OK && again == F,
          "C_GetFunctionList returns the same static list every time");
    check_table("2.40 function list", F, 68);
    if (gate_mode) {
        size_t missing = 0;
        for (size_t i = 0; i < 24; i++)
            if (!dlsym(module, names_3_0[i]))
                missing++;
        check(missing == 0, "all 24 PKCS#11 3.0 functions are exported (%zu missing)", missing);
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* 2. Interfaces                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

static void interfaces(void)
{
    CK_C_GetInterfaceList gil = (CK_C_GetInterfaceList)dlsym(module, "C_GetInterfaceList");
    CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(module, "C_GetInterface");
    CK_INTERFACE list[8], *ip = NULL;
    CK_ULONG n = 0, i;
    int have240 = 0, have30 = 0, other = 0;
    CK_VERSION v240 = {2, 40}, v30 = {3, 0}, v99 = {9, 9};
    CK_UTF8CHAR std_name[] = "PKCS 11", vendor_name[] = "Vendor p11gate-test";

    if (iface_expect == 0) {
        check(gil == NULL && gi == NULL, "module exports neither C_GetInterfaceList nor "
                                         "C_GetInterface (a 2.40-only module)");
        return;
    }
    if (!check(gil != NULL && gi != NULL, "C_GetInterfaceList and C_GetInterface are exported"))
        return;

    check_rv("C_GetInterfaceList(NULL, NULL)", gil(NULL, NULL), CKR_ARGUMENTS_BAD);
    if (!check_rv("C_GetInterfaceList(NULL, &count) before C_Initialize", gil(NULL, &n), CKR_OK))
        return;
    check(n == (CK_ULONG)(iface_expect == 3 ? 2 : 1), "interface count is %d (got %lu)",
          iface_expect == 3 ? 2 : 1, (unsigned long)n);
    if (n > 8)
        n = 8;
    {
        CK_ULONG zero = 0;
        check_rv("C_GetInterfaceList(list, &0)", gil(list, &zero), CKR_BUFFER_TOO_SMALL);
        check(zero == n, "C_GetInterfaceList(list, &0) sets the needed count (%lu)",
              (unsigned long)zero);
    }
    if (!check_rv("C_GetInterfaceList(list, &count)", gil(list, &n), CKR_OK))
        return;
    for (i = 0; i < n; i++) {
        const CK_VERSION *v = list[i].pFunctionList;
        const char *name = (const char *)list[i].pInterfaceName;
        if (!name || !v || strcmp(name, "PKCS 11") != 0) {
            other++;
            continue;
        }
        info("interface \"%s\" %u.%u flags 0x%lx", name, v->major, v->minor,
             (unsigned long)list[i].flags);
        if (v->major == 2 && v->minor == 40)
            have240++;
        else if (v->major == 3 && v->minor == 0)
            have30++;
        else
            other++;
    }
    check(have240 == 1, "\"PKCS 11\" 2.40 is offered once (%d)", have240);
    if (iface_expect == 3)
        check(have30 == 1, "\"PKCS 11\" 3.0 is offered once (%d)", have30);
    else
        check(have30 == 0, "\"PKCS 11\" 3.0 is not offered (%d)", have30);
    check(other == 0, "no other interface is listed (%d)", other);

    /* C_GetInterface */
    check_rv("C_GetInterface(\"PKCS 11\", 2.40, NULL)", gi(std_name, &v240, NULL, 0),
             CKR_ARGUMENTS_BAD);
    ip = NULL;
    if (check_rv("C_GetInterface(NULL, NULL, &iface)", gi(NULL, NULL, &ip, 0), CKR_OK))
        check(ip && ip->pFunctionList, "default interface has a function list");
    ip = NULL;
    if (check_rv("C_GetInterface(\"PKCS 11\", 2.40)", gi(std_name, &v240, &ip, 0), CKR_OK) &&
        check(ip && ip->pFunctionList, "2.40 interface has a function list")) {
        const CK_FUNCTION_LIST *l = ip->pFunctionList;
        check(l->version.major == 2 && l->version.minor == 40,
              "2.40 interface's list says 2.40 (got %u.%u)", l->version.major, l->version.minor);
        check_table("2.40 interface's function list", l, 68);
    }
    ip = NULL;
    if (iface_expect == 3) {
        if (check_rv("C_GetInterface(\"PKCS 11\", 3.0)", gi(std_name, &v30, &ip, 0), CKR_OK) &&
            check(ip && ip->pFunctionList, "3.0 interface has a function list")) {
            F3 = ip->pFunctionList;
            check(F3->version.major == 3 && F3->version.minor == 0,
                  "3.0 interface's list says 3.0 (got %u.%u)", F3->version.major,
                  F3->version.minor);
            check_table("3.0 interface's function list", F3, 92);
        }
    } else {
        check_rv("C_GetInterface(\"PKCS 11\", 3.0) (not offered)", gi(std_name, &v30, &ip, 0),
                 CKR_ARGUMENTS_BAD);
    }
    ip = NULL;
    check_rv("C_GetInterface(\"PKCS 11\", 9.9)", gi(std_name, &v99, &ip, 0), CKR_ARGUMENTS_BAD);
    check_rv("C_GetInterface(\"Vendor p11gate-test\", NULL)", gi(vendor_name, NULL, &ip, 0),
             CKR_ARGUMENTS_BAD);
}

/* A shorter look at the interfaces, repeated while initialised: the 3.0 interface must not depend
 * on whether C_Initialize has loaded the upstream yet. */
static void interface_summary(const char *when)
{
    CK_C_GetInterfaceList gil = (CK_C_GetInterfaceList)dlsym(module, "C_GetInterfaceList");
    CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(module, "C_GetInterface");
    CK_INTERFACE list[8], *ip = NULL;
    CK_ULONG n = 8;
    CK_VERSION v30 = {3, 0};
    CK_UTF8CHAR std_name[] = "PKCS 11";
    int have30 = 0;
    char what[128];

    if (iface_expect == 0 || !gil || !gi)
        return;
    snprintf(what, sizeof what, "%s: C_GetInterfaceList(list, &count)", when);
    if (check_rv(what, gil(list, &n), CKR_OK)) {
        for (CK_ULONG i = 0; i < n; i++) {
            const CK_VERSION *v = list[i].pFunctionList;
            if (v && v->major == 3 && v->minor == 0)
                have30++;
        }
        check(have30 == (iface_expect == 3), "%s: \"PKCS 11\" 3.0 is %s (%d listed)", when,
              iface_expect == 3 ? "offered" : "not offered", have30);
    }
    snprintf(what, sizeof what, "%s: C_GetInterface(\"PKCS 11\", 3.0)", when);
    check_rv(what, gi(std_name, &v30, &ip, 0), iface_expect == 3 ? CKR_OK : CKR_ARGUMENTS_BAD);
}

/* ---------------------------------------------------------------------------------------------- */
/* 3. Before C_Initialize: every function answers CKR_CRYPTOKI_NOT_INITIALIZED                    */
/* ---------------------------------------------------------------------------------------------- */

static void not_initialized_everywhere(const char *when)
{
    CK_BYTE buf[64], buf2[64];
    CK_ULONG len = sizeof buf, len2 = sizeof buf2;
    CK_SLOT_ID slots[4];
    CK_ULONG nslots = 4;
    CK_INFO ci;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_MECHANISM_TYPE mechs[4];
    CK_ULONG nmechs = 4;
    CK_MECHANISM_INFO mi;
    CK_SESSION_HANDLE h = BOGUS_SESSION, hnew = 0;
    CK_SESSION_INFO sinfo;
    CK_OBJECT_HANDLE obj = 1, obj2 = 0, objs[4];
    CK_ULONG nobj = 0, size = 0;
    CK_BBOOL t = CK_TRUE;
    CK_ATTRIBUTE attr = {CKA_TOKEN, &t, sizeof t};
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
    CK_SLOT_ID ev = 0;
    CK_UTF8CHAR p[] = "12345678", lbl[32];
    const CK_RV want = CKR_CRYPTOKI_NOT_INITIALIZED;
    char what[128];

    memset(buf, 0x11, sizeof buf);
    memset(lbl, ' ', sizeof lbl);

#define NI(fn, args)                                                     \
    do {                                                                 \
        snprintf(what, sizeof what, "%s: %s", when, #fn);                \
        check_rv(what, F->fn args, want);                                \
    } while (0)

    NI(C_Finalize, (NULL));
    NI(C_GetInfo, (&ci));
    NI(C_GetSlotList, (CK_TRUE, slots, &nslots));
    NI(C_GetSlotInfo, (0, &si));
    NI(C_GetTokenInfo, (0, &ti));
    NI(C_GetMechanismList, (0, mechs, &nmechs));
    NI(C_GetMechanismInfo, (0, CKM_AES_CBC_PAD, &mi));
    NI(C_InitToken, (0, p, 8, lbl));
    NI(C_InitPIN, (h, p, 8));
    NI(C_SetPIN, (h, p, 8, p, 8));
    NI(C_OpenSession, (0, CKF_SERIAL_SESSION, NULL, NULL, &hnew));
    NI(C_CloseSession, (h));
    NI(C_CloseAllSessions, (0));
    NI(C_GetSessionInfo, (h, &sinfo));
    NI(C_GetOperationState, (h, buf, &len));
    NI(C_SetOperationState, (h, buf, 16, 0, 0));
    NI(C_Login, (h, CKU_USER, p, 8));
    NI(C_Logout, (h));
    NI(C_CreateObject, (h, &attr, 1, &obj2));
    NI(C_CopyObject, (h, obj, &attr, 1, &obj2));
    NI(C_DestroyObject, (h, obj));
    NI(C_GetObjectSize, (h, obj, &size));
    NI(C_GetAttributeValue, (h, obj, &attr, 1));
    NI(C_SetAttributeValue, (h, obj, &attr, 1));
    NI(C_FindObjectsInit, (h, &attr, 1));
    NI(C_FindObjects, (h, objs, 4, &nobj));
    NI(C_FindObjectsFinal, (h));
    NI(C_EncryptInit, (h, &mech, obj));
    NI(C_Encrypt, (h, buf, 16, buf2, &len2));
    NI(C_EncryptUpdate, (h, buf, 16, buf2, &len2));
    NI(C_EncryptFinal, (h, buf2, &len2));
    NI(C_DecryptInit, (h, &mech, obj));
    NI(C_Decrypt, (h, buf, 16, buf2, &len2));
    NI(C_DecryptUpdate, (h, buf, 16, buf2, &len2));
    NI(C_DecryptFinal, (h, buf2, &len2));
    NI(C_DigestInit, (h, &mech));
    NI(C_Digest, (h, buf, 16, buf2, &len2));
    NI(C_DigestUpdate, (h, buf, 16));
    NI(C_DigestKey, (h, obj));
    NI(C_DigestFinal, (h, buf2, &len2));
    NI(C_SignInit, (h, &mech, obj));
    NI(C_Sign, (h, buf, 16, buf2, &len2));
    NI(C_SignUpdate, (h, buf, 16));
    NI(C_SignFinal, (h, buf2, &len2));
    NI(C_SignRecoverInit, (h, &mech, obj));
    NI(C_SignRecover, (h, buf, 16, buf2, &len2));
    NI(C_VerifyInit, (h, &mech, obj));
    NI(C_Verify, (h, buf, 16, buf2, 16));
    NI(C_VerifyUpdate, (h, buf, 16));
    NI(C_VerifyFinal, (h, buf2, 16));
    NI(C_VerifyRecoverInit, (h, &mech, obj));
    NI(C_VerifyRecover, (h, buf, 16, buf2, &len2));
    NI(C_DigestEncryptUpdate, (h, buf, 16, buf2, &len2));
    NI(C_DecryptDigestUpdate, (h, buf, 16, buf2, &len2));
    NI(C_SignEncryptUpdate, (h, buf, 16, buf2, &len2));
    NI(C_DecryptVerifyUpdate, (h, buf, 16, buf2, &len2));
    NI(C_GenerateKey, (h, &mech, &attr, 1, &obj2));
    NI(C_GenerateKeyPair, (h, &mech, &attr, 1, &attr, 1, &obj2, &obj2));
    NI(C_WrapKey, (h, &mech, obj, obj, buf2, &len2));
    NI(C_UnwrapKey, (h, &mech, obj, buf, 16, &attr, 1, &obj2));
    NI(C_DeriveKey, (h, &mech, obj, &attr, 1, &obj2));
    NI(C_SeedRandom, (h, buf, 16));
    NI(C_GenerateRandom, (h, buf2, 16));
    NI(C_GetFunctionStatus, (h));
    NI(C_CancelFunction, (h));
    NI(C_WaitForSlotEvent, (CKF_DONT_BLOCK, &ev, NULL));
#undef NI
}

/* The 24 3.0 functions, through the 3.0 list when one is offered, else through the exports. */
static void calls_3_0(const char *when, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, CK_RV want)
{
    CK_FUNCTION_LIST_3_0 l;
    CK_BYTE buf[64], buf2[64], iv[16];
    CK_ULONG len2 = sizeof buf2;
    CK_MECHANISM mech = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_UTF8CHAR p[] = "12345678", user[] = "user";
    CK_INTERFACE_PTR ip = NULL;
    CK_ULONG n = 0;
    char what[160];
    const char *via = F3 ? "3.0 list" : "export";

    memset(buf, 0x22, sizeof buf);
    memset(iv, 0, sizeof iv);
    memset(&l, 0, sizeof l);
    if (F3) {
        l = *F3;
    } else {
#define SYM(fn) l.fn = (CK_##fn)dlsym(module, #fn)
        SYM(C_LoginUser); SYM(C_SessionCancel);
        SYM(C_MessageEncryptInit); SYM(C_EncryptMessage); SYM(C_EncryptMessageBegin);
        SYM(C_EncryptMessageNext); SYM(C_MessageEncryptFinal);
        SYM(C_MessageDecryptInit); SYM(C_DecryptMessage); SYM(C_DecryptMessageBegin);
        SYM(C_DecryptMessageNext); SYM(C_MessageDecryptFinal);
        SYM(C_MessageSignInit); SYM(C_SignMessage); SYM(C_SignMessageBegin);
        SYM(C_SignMessageNext); SYM(C_MessageSignFinal);
        SYM(C_MessageVerifyInit); SYM(C_VerifyMessage); SYM(C_VerifyMessageBegin);
        SYM(C_VerifyMessageNext); SYM(C_MessageVerifyFinal);
#undef SYM
    }

#define C3(fn, args)                                                         \
    do {                                                                     \
        snprintf(what, sizeof what, "%s: %s (%s)", when, #fn, via);          \
        if (check(l.fn != NULL, "%s is available", what))                    \
            check_rv(what, l.fn args, want);                                 \
    } while (0)

    C3(C_LoginUser, (h, CKU_USER, p, 8, user, 4));
    C3(C_SessionCancel, (h, CKF_MESSAGE_ENCRYPT));
    C3(C_MessageEncryptInit, (h, &mech, key));
    C3(C_EncryptMessage, (h, iv, 16, buf, 8, buf, 16, buf2, &len2));
    C3(C_EncryptMessageBegin, (h, iv, 16, buf, 8));
    C3(C_EncryptMessageNext, (h, iv, 16, buf, 16, buf2, &len2, CKF_END_OF_MESSAGE));
    C3(C_MessageEncryptFinal, (h));
    C3(C_MessageDecryptInit, (h, &mech, key));
    C3(C_DecryptMessage, (h, iv, 16, buf, 8, buf, 16, buf2, &len2));
    C3(C_DecryptMessageBegin, (h, iv, 16, buf, 8));
    C3(C_DecryptMessageNext, (h, iv, 16, buf, 16, buf2, &len2, CKF_END_OF_MESSAGE));
    C3(C_MessageDecryptFinal, (h));
    C3(C_MessageSignInit, (h, &mech, key));
    C3(C_SignMessage, (h, iv, 16, buf, 16, buf2, &len2));
    C3(C_SignMessageBegin, (h, iv, 16));
    C3(C_SignMessageNext, (h, iv, 16, buf, 16, buf2, &len2));
    C3(C_MessageSignFinal, (h));
    C3(C_MessageVerifyInit, (h, &mech, key));
    C3(C_VerifyMessage, (h, iv, 16, buf, 16, buf2, 16));
    C3(C_VerifyMessageBegin, (h, iv, 16));
    C3(C_VerifyMessageNext, (h, iv, 16, buf, 16, buf2, 16));
    C3(C_MessageVerifyFinal, (h));
#undef C3

    /* The two interface functions work in every state. */
    if (F3) {
        snprintf(what, sizeof what, "%s: C_GetInterfaceList (3.0 list)", when);
        check_rv(what, F3->C_GetInterfaceList(NULL, &n), CKR_OK);
        snprintf(what, sizeof what, "%s: C_GetInterface (3.0 list)", when);
        check_rv(what, F3->C_GetInterface(NULL, NULL, &ip, 0), CKR_OK);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* 4. The forms of C_Initialize, C_Finalize                                                       */
/* ---------------------------------------------------------------------------------------------- */

static void lifecycle(void)
{
    CK_C_INITIALIZE_ARGS a;
    CK_INFO ci;
    int dummy;

    /* Malformed arguments leave the module uninitialised. */
    a = init_args(CKF_OS_LOCKING_OK, 0);
    a.pReserved = &dummy;
    check_rv("C_Initialize(pReserved != NULL)", F->C_Initialize(&a), CKR_ARGUMENTS_BAD);
    a = init_args(0, 0);
    a.CreateMutex = app_create;
    check_rv("C_Initialize(only CreateMutex)", F->C_Initialize(&a), CKR_ARGUMENTS_BAD);
    a = init_args(0, 1);
    a.UnlockMutex = NULL;
    check_rv("C_Initialize(3 of 4 mutex callbacks)", F->C_Initialize(&a), CKR_ARGUMENTS_BAD);
    a = init_args(CKF_OS_LOCKING_OK, 1);
    a.LockMutex = NULL;
    check_rv("C_Initialize(3 of 4 mutex callbacks | CKF_OS_LOCKING_OK)", F->C_Initialize(&a),
             CKR_ARGUMENTS_BAD);
    check_rv("C_GetInfo after refused C_Initialize", F->C_GetInfo(&ci),
             CKR_CRYPTOKI_NOT_INITIALIZED);

    /* NULL, double init, C_Finalize(non-NULL), finalize/finalize. */
    check_rv("C_Initialize(NULL)", F->C_Initialize(NULL), CKR_OK);
    check_rv("C_Initialize(NULL) again", F->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
    a = init_args(CKF_OS_LOCKING_OK, 0);
    check_rv("C_Initialize(CKF_OS_LOCKING_OK) while initialised", F->C_Initialize(&a),
             CKR_CRYPTOKI_ALREADY_INITIALIZED);
    check_rv("C_GetInfo while initialised", F->C_GetInfo(&ci), CKR_OK);
    check_rv("C_Finalize(non-NULL)", F->C_Finalize(&dummy), CKR_ARGUMENTS_BAD);
    check_rv("C_GetInfo after refused C_Finalize", F->C_GetInfo(&ci), CKR_OK);
    check_rv("C_Finalize(NULL)", F->C_Finalize(NULL), CKR_OK);
    check_rv("C_GetInfo after C_Finalize", F->C_GetInfo(&ci), CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_Finalize(NULL) again", F->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

    /* Every accepted form, each followed by real work and C_Finalize. */
    a = init_args(0, 0);
    check_rv("C_Initialize(flags 0, no callbacks)", F->C_Initialize(&a), CKR_OK);
    exercise("flags 0");
    check_rv("C_Finalize [flags 0]", F->C_Finalize(NULL), CKR_OK);

    a = init_args(CKF_OS_LOCKING_OK, 0);
    check_rv("C_Initialize(CKF_OS_LOCKING_OK)", F->C_Initialize(&a), CKR_OK);
    exercise("OS locking");
    check_rv("C_Finalize [OS locking]", F->C_Finalize(NULL), CKR_OK);

    a = init_args(0, 1);
    check_rv("C_Initialize(4 app mutex callbacks)", F->C_Initialize(&a), CKR_OK);
    exercise("app mutexes");
    check_rv("C_Finalize [app mutexes]", F->C_Finalize(NULL), CKR_OK);
    info("app mutex callbacks: %lu created, %lu destroyed, %lu locks", n_created, n_destroyed,
         n_locks);
    check(n_misuse == 0, "app mutex callbacks were used correctly (%lu misuses)", n_misuse);

    a = init_args(CKF_OS_LOCKING_OK, 1);
    check_rv("C_Initialize(4 app mutex callbacks | CKF_OS_LOCKING_OK)", F->C_Initialize(&a),
             CKR_OK);
    exercise("app mutexes + OS locking");
    check_rv("C_Finalize [app mutexes + OS locking]", F->C_Finalize(NULL), CKR_OK);
    check(n_misuse == 0, "app mutex callbacks were used correctly (%lu misuses)", n_misuse);

    a = init_args(CKF_LIBRARY_CANT_CREATE_OS_THREADS, 0);
    check_rv("C_Initialize(CKF_LIBRARY_CANT_CREATE_OS_THREADS)", F->C_Initialize(&a), CKR_OK);
    exercise("no threads");
    check_rv("C_Finalize [no threads]", F->C_Finalize(NULL), CKR_OK);

    a = init_args(CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK, 0);
    check_rv("C_Initialize(CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK)",
             F->C_Initialize(&a), CKR_OK);
    check_rv("C_Finalize [no threads + OS locking]", F->C_Finalize(NULL), CKR_OK);

    for (int i = 1; i <= 3; i++) {
        char what[80];
        snprintf(what, sizeof what, "C_Initialize(NULL) cycle %d", i);
        check_rv(what, F->C_Initialize(NULL), CKR_OK);
        snprintf(what, sizeof what, "C_Finalize(NULL) cycle %d", i);
        check_rv(what, F->C_Finalize(NULL), CKR_OK);
    }
}

/* -U: the upstream cannot be loaded. */
static void lifecycle_without_upstream(void)
{
    CK_INFO ci;
    CK_FUNCTION_LIST_PTR l = NULL;
    CK_C_INITIALIZE_ARGS a = init_args(CKF_OS_LOCKING_OK, 0);

    check_rv("C_Initialize(NULL) without upstream", F->C_Initialize(NULL), CKR_GENERAL_ERROR);
    check_rv("C_GetInfo after failed C_Initialize", F->C_GetInfo(&ci),
             CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_Initialize(CKF_OS_LOCKING_OK) without upstream, again", F->C_Initialize(&a),
             CKR_GENERAL_ERROR);
    check_rv("C_Finalize after failed C_Initialize", F->C_Finalize(NULL),
             CKR_CRYPTOKI_NOT_INITIALIZED);
    check_rv("C_GetFunctionList still works", F->C_GetFunctionList(&l), CKR_OK);
    check(l == F, "C_GetFunctionList still returns the same list");
}

/* ---------------------------------------------------------------------------------------------- */
/* 5. Initialised: C_GetInfo, NULL arguments, a session on the token, AES round trip              */
/* ---------------------------------------------------------------------------------------------- */

static int blank_padded(const CK_UTF8CHAR *field, size_t size)
{
    for (size_t i = 0; i < size; i++)
        if (field[i] < 0x20 || field[i] > 0x7e)
            return 0;
    return 1;
}

static void get_info(void)
{
    CK_INFO ci;
    char want[32];

    memset(want, ' ', sizeof want);
    memcpy(want, P11GATE_MANUFACTURER_ID, strlen(P11GATE_MANUFACTURER_ID));
    check_rv("C_GetInfo(NULL)", F->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
    if (!check_rv("C_GetInfo(&info)", F->C_GetInfo(&ci), CKR_OK))
        return;
    info("manufacturerID \"%.32s\" libraryDescription \"%.32s\" cryptoki %u.%u library %u.%u",
         ci.manufacturerID, ci.libraryDescription, ci.cryptokiVersion.major,
         ci.cryptokiVersion.minor, ci.libraryVersion.major, ci.libraryVersion.minor);
    check(blank_padded(ci.manufacturerID, 32), "C_GetInfo manufacturerID is printable and blank "
                                               "padded");
    check(blank_padded(ci.libraryDescription, 32), "C_GetInfo libraryDescription is printable "
                                                   "and blank padded");
    check(ci.flags == 0, "C_GetInfo flags are 0 (got 0x%lx)", (unsigned long)ci.flags);
    check(ci.cryptokiVersion.major == P11GATE_CRYPTOKI_VERSION_MAJOR &&
              ci.cryptokiVersion.minor == P11GATE_CRYPTOKI_VERSION_MINOR,
          "C_GetInfo cryptokiVersion is 2.40 (got %u.%u)", ci.cryptokiVersion.major,
          ci.cryptokiVersion.minor);
    if (gate_mode)
        check(memcmp(ci.manufacturerID, want, 32) == 0,
              "C_GetInfo manufacturerID is \"p11gate\" + 25 blanks (got \"%.32s\")",
              ci.manufacturerID);
}

static void session_work(void)
{
    CK_SLOT_ID slot;
    CK_ULONG n = 0;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    CK_SESSION_HANDLE h = 0, h2 = 0;
    CK_SESSION_INFO sinfo;
    CK_BYTE rnd[32], zero[32];
    CK_UTF8CHAR wrong[] = "wrong-pin-0000";
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
    CK_BYTE iv[16];
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_OBJECT_HANDLE key = 0;
    CK_BYTE plain[37], ct[64], ct2[64], back[64];
    CK_ULONG ctlen, ct2len, backlen, part;
    CK_C_INITIALIZE_ARGS a = init_args(CKF_OS_LOCKING_OK, 0);
    CK_MECHANISM_TYPE mechs[512];
    CK_ULONG nmechs = 512;
    int has_cbc_pad = 0;

    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (CK_BYTE)('A' + i % 26);
    for (size_t i = 0; i < sizeof iv; i++)
        iv[i] = (CK_BYTE)(0xa0 + i);
    memset(zero, 0, sizeof zero);

    if (!check_rv("C_Initialize(CKF_OS_LOCKING_OK) for the session checks", F->C_Initialize(&a),
                  CKR_OK))
        return;
    get_info();
    interface_summary("initialised");

    /* Slots and token */
    check_rv("C_GetSlotList(TRUE, NULL, NULL)", F->C_GetSlotList(CK_TRUE, NULL, NULL),
             CKR_ARGUMENTS_BAD);
    check_rv("C_GetSlotList(TRUE, NULL, &n)", F->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
    check(n >= 1, "at least one slot with a token (%lu)", (unsigned long)n);
    slot = find_slot();
    if (!check(slot != BOGUS_SLOT, "token \"%s\" found", label))
        goto finalize;
    check_rv("C_GetSlotInfo(slot)", F->C_GetSlotInfo(slot, &si), CKR_OK);
    check(si.flags & CKF_TOKEN_PRESENT, "slot has CKF_TOKEN_PRESENT");
    check_rv("C_GetTokenInfo(slot)", F->C_GetTokenInfo(slot, &ti), CKR_OK);
    check(ti.flags & CKF_TOKEN_INITIALIZED, "token has CKF_TOKEN_INITIALIZED");
    check(ti.flags & CKF_USER_PIN_INITIALIZED, "token has CKF_USER_PIN_INITIALIZED");
    check_rv("C_GetSlotInfo(bogus slot)", F->C_GetSlotInfo(BOGUS_SLOT, &si), CKR_SLOT_ID_INVALID);
    check_rv("C_GetMechanismList(slot, NULL, &n)", F->C_GetMechanismList(slot, NULL, &nmechs),
             CKR_OK);
    nmechs = 512;
    if (check_rv("C_GetMechanismList(slot, list, &n)", F->C_GetMechanismList(slot, mechs, &nmechs),
                 CKR_OK))
        for (CK_ULONG i = 0; i < nmechs; i++)
            if (mechs[i] == CKM_AES_CBC_PAD)
                has_cbc_pad = 1;
    check(has_cbc_pad, "CKM_AES_CBC_PAD is in the mechanism list");
    check_rv("C_GetSlotInfo(slot, NULL)", F->C_GetSlotInfo(slot, NULL), CKR_ARGUMENTS_BAD);
    check_rv("C_GetTokenInfo(slot, NULL)", F->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
    check_rv("C_GetMechanismList(slot, NULL, NULL)", F->C_GetMechanismList(slot, NULL, NULL),
             CKR_ARGUMENTS_BAD);

    /* Sessions */
    check_rv("C_OpenSession(..., NULL phSession)",
             F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, NULL),
             CKR_ARGUMENTS_BAD);
    check_rv("C_OpenSession without CKF_SERIAL_SESSION",
             F->C_OpenSession(slot, CKF_RW_SESSION, NULL, NULL, &h2),
             CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    if (!check_rv("C_OpenSession(RW)",
                  F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h),
                  CKR_OK))
        goto finalize;
    check_rv("C_GetSessionInfo(h, NULL)", F->C_GetSessionInfo(h, NULL), CKR_ARGUMENTS_BAD);
    if (check_rv("C_GetSessionInfo(h)", F->C_GetSessionInfo(h, &sinfo), CKR_OK)) {
        check(sinfo.state == CKS_RW_PUBLIC_SESSION, "session state is CKS_RW_PUBLIC_SESSION (%lu)",
              (unsigned long)sinfo.state);
        check(sinfo.slotID == slot, "session's slotID is the token's slot");
    }
    check_rv("C_GetSessionInfo(bogus handle)", F->C_GetSessionInfo(BOGUS_SESSION, &sinfo),
             CKR_SESSION_HANDLE_INVALID);
    check_rv("C_GenerateRandom(bogus handle)", F->C_GenerateRandom(BOGUS_SESSION, rnd, 16),
             CKR_SESSION_HANDLE_INVALID);
    check_rv("C_CloseSession(bogus handle)", F->C_CloseSession(BOGUS_SESSION),
             CKR_SESSION_HANDLE_INVALID);

    /* Login */
    check_rv("C_Login(NULL pin, length 8)", F->C_Login(h, CKU_USER, NULL, 8),
             CKR_ARGUMENTS_BAD);
    check_rv("C_Login(wrong PIN)", F->C_Login(h, CKU_USER, wrong, sizeof wrong - 1),
             CKR_PIN_INCORRECT);
    if (!check_rv("C_Login(user PIN)",
                  F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)), CKR_OK))
        goto close;
    check_rv("C_Login again", F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, (CK_ULONG)strlen(pin)),
             CKR_USER_ALREADY_LOGGED_IN);
    if (check_rv("C_GetSessionInfo(h) after login", F->C_GetSessionInfo(h, &sinfo), CKR_OK))
        check(sinfo.state == CKS_RW_USER_FUNCTIONS, "session state is CKS_RW_USER_FUNCTIONS (%lu)",
              (unsigned long)sinfo.state);

    /* Random */
    memset(rnd, 0, sizeof rnd);
    if (check_rv("C_GenerateRandom(32)", F->C_GenerateRandom(h, rnd, sizeof rnd), CKR_OK))
        check(memcmp(rnd, zero, sizeof rnd) != 0, "random bytes are not all zero");
    check_rv("C_GenerateRandom(NULL buffer, 16)", F->C_GenerateRandom(h, NULL, 16),
             CKR_ARGUMENTS_BAD);

    /* AES key */
    check_rv("C_GenerateKey(NULL mechanism)",
             F->C_GenerateKey(h, NULL, tmpl, sizeof tmpl / sizeof tmpl[0], &key),
             CKR_ARGUMENTS_BAD);
    check_rv("C_GenerateKey(NULL phKey)",
             F->C_GenerateKey(h, &keygen, tmpl, sizeof tmpl / sizeof tmpl[0], NULL),
             CKR_ARGUMENTS_BAD);
    if (!check_rv("C_GenerateKey(CKM_AES_KEY_GEN, 256 bit)",
                  F->C_GenerateKey(h, &keygen, tmpl, sizeof tmpl / sizeof tmpl[0], &key), CKR_OK))
        goto logout;

    /* Encrypt: refusals first, then the two-call convention, then the real thing. */
    ctlen = sizeof ct;
    check_rv("C_Encrypt without C_EncryptInit", F->C_Encrypt(h, plain, sizeof plain, ct, &ctlen),
             CKR_OPERATION_NOT_INITIALIZED);
    check_rv("C_EncryptInit(NULL mechanism)", F->C_EncryptInit(h, NULL, key),
             CKR_ARGUMENTS_BAD);
    check_rv("C_EncryptInit(AES-CBC-PAD) before the NULL-length check",
             F->C_EncryptInit(h, &cbc, key), CKR_OK);
    check_rv("C_Encrypt(NULL pulEncryptedDataLen)",
             F->C_Encrypt(h, plain, sizeof plain, ct, NULL), CKR_ARGUMENTS_BAD);
    /* The spec says a failed C_Encrypt ends the operation, but SoftHSMv2 itself keeps it
     * active after CKR_ARGUMENTS_BAD; report what happens without judging it. */
    {
        char r[48];
        print_rv(r, sizeof r, F->C_EncryptInit(h, &cbc, key));
        info("C_EncryptInit right after the refused C_Encrypt -> %s", r);
    }
    ctlen = sizeof ct;
    F->C_Encrypt(h, plain, sizeof plain, ct, &ctlen); /* end it, whatever state it is in */
    if (!check_rv("C_EncryptInit(AES-CBC-PAD)", F->C_EncryptInit(h, &cbc, key), CKR_OK))
        goto logout;
    ctlen = 0;
    check_rv("C_Encrypt(NULL out) size query", F->C_Encrypt(h, plain, sizeof plain, NULL, &ctlen),
             CKR_OK);
    check(ctlen >= 48 && ctlen <= sizeof ct, "size query answers >= 48 (got %lu)",
          (unsigned long)ctlen);
    ctlen = 8;
    check_rv("C_Encrypt(8-byte buffer)", F->C_Encrypt(h, plain, sizeof plain, ct, &ctlen),
             CKR_BUFFER_TOO_SMALL);
    ctlen = sizeof ct;
    if (check_rv("C_Encrypt(37 bytes)", F->C_Encrypt(h, plain, sizeof plain, ct, &ctlen), CKR_OK))
        check(ctlen == 48, "ciphertext is 48 bytes (got %lu)", (unsigned long)ctlen);
    check(memcmp(ct, plain, 32) != 0, "ciphertext differs from plaintext");

    /* Multi-part encryption gives the same ciphertext. */
    ct2len = 0;
    if (check_rv("C_EncryptInit(AES-CBC-PAD) multi-part", F->C_EncryptInit(h, &cbc, key), CKR_OK)) {
        part = sizeof ct2;
        check_rv("C_EncryptUpdate(20 bytes)", F->C_EncryptUpdate(h, plain, 20, ct2, &part),
                 CKR_OK);
        ct2len = part;
        part = sizeof ct2 - ct2len;
        check_rv("C_EncryptUpdate(17 bytes)",
                 F->C_EncryptUpdate(h, plain + 20, sizeof plain - 20, ct2 + ct2len, &part), CKR_OK);
        ct2len += part;
        part = sizeof ct2 - ct2len;
        check_rv("C_EncryptFinal", F->C_EncryptFinal(h, ct2 + ct2len, &part), CKR_OK);
        ct2len += part;
        check(ct2len == ctlen && memcmp(ct, ct2, ctlen) == 0,
              "multi-part ciphertext equals single-part ciphertext");
    }

    /* Decrypt */
    if (check_rv("C_DecryptInit(AES-CBC-PAD)", F->C_DecryptInit(h, &cbc, key), CKR_OK)) {
        backlen = sizeof back;
        if (check_rv("C_Decrypt", F->C_Decrypt(h, ct, ctlen, back, &backlen), CKR_OK))
            check(backlen == sizeof plain && memcmp(back, plain, sizeof plain) == 0,
                  "decrypted text equals the plaintext (%lu bytes)", (unsigned long)backlen);
    }

    /* The 3.0 functions: without a 3.0 upstream p11gate answers CKR_FUNCTION_NOT_SUPPORTED. */
    if (gate_mode && iface_expect == 2)
        calls_3_0("initialised, 2.40 upstream", h, key, CKR_FUNCTION_NOT_SUPPORTED);

    check_rv("C_DestroyObject(key)", F->C_DestroyObject(h, key), CKR_OK);
logout:
    check_rv("C_Logout", F->C_Logout(h), CKR_OK);
    if (check_rv("C_GetSessionInfo(h) after logout", F->C_GetSessionInfo(h, &sinfo), CKR_OK))
        check(sinfo.state == CKS_RW_PUBLIC_SESSION, "session state is CKS_RW_PUBLIC_SESSION again");
close:
    check_rv("C_CloseSession(h)", F->C_CloseSession(h), CKR_OK);
    check_rv("C_GetSessionInfo(closed handle)", F->C_GetSessionInfo(h, &sinfo),
             CKR_SESSION_HANDLE_INVALID);
    check_rv("C_CloseSession(closed handle)", F->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID);
finalize:
    check_rv("C_Finalize(NULL)", F->C_Finalize(NULL), CKR_OK);
    not_initialized_everywhere("after C_Finalize");
}

/* -n: a module without a token. */
static void tokenless(void)
{
    CK_ULONG n = 0;
    CK_SESSION_INFO sinfo;

    if (!check_rv("C_Initialize(NULL)", F->C_Initialize(NULL), CKR_OK))
        return;
    get_info();
    interface_summary("initialised");
    check_rv("C_GetSlotList(FALSE, NULL, &n)", F->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
    info("%lu slots", (unsigned long)n);
    check_rv("C_GetSessionInfo(bogus handle)", F->C_GetSessionInfo(BOGUS_SESSION, &sinfo),
             CKR_SESSION_HANDLE_INVALID);
    if (F3)
        calls_3_0("initialised, unknown session", BOGUS_SESSION, 1, CKR_SESSION_HANDLE_INVALID);
    check_rv("C_Finalize(NULL)", F->C_Finalize(NULL), CKR_OK);
    not_initialized_everywhere("after C_Finalize");
}

/* ---------------------------------------------------------------------------------------------- */

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-g] [-I 0|2|3] [-U] [-n] [-l LABEL] [-p PIN] MODULE.so\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    int c;

    while ((c = getopt(argc, argv, "gI:Unl:p:")) != -1) {
        switch (c) {
        case 'g': gate_mode = 1; break;
        case 'I': iface_expect = atoi(optarg); break;
        case 'U': upstream_missing = 1; break;
        case 'n': no_token = 1; break;
        case 'l': label = optarg; break;
        case 'p': pin = optarg; break;
        default: usage(argv[0]);
        }
    }
    if (optind + 1 != argc || (iface_expect != 0 && iface_expect != 2 && iface_expect != 3))
        usage(argv[0]);
    module_path = argv[optind];
    if (!pin)
        pin = getenv("P11_USER_PIN");
    if (!upstream_missing && !no_token && (!label || !pin)) {
        fprintf(stderr, "%s: a token label (-l) and a PIN (-p or P11_USER_PIN) are needed\n",
                argv[0]);
        return 2;
    }

    if (load()) {
        interfaces();
        not_initialized_everywhere("before C_Initialize");
        if (gate_mode)
            calls_3_0("before C_Initialize", BOGUS_SESSION, 1, CKR_CRYPTOKI_NOT_INITIALIZED);
        if (upstream_missing) {
            lifecycle_without_upstream();
        } else if (no_token) {
            tokenless();
        } else {
            lifecycle();
            session_work();
        }
    }

    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
}
