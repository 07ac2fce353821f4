/*
 * faulty.c - a fault-injecting PKCS#11 module for tests/upstream_faults.rs.
 *
 * It dlopens the real module named by FAULTY_REAL (SoftHSMv2), copies its CK_FUNCTION_LIST and
 * replaces a few entries with wrappers that follow a schedule read from FAULTY_SCHEDULE: a
 * comma-separated list of rules FUNCTION:WHICH:ACTION, where
 *   FUNCTION  one of C_Initialize, C_OpenSession, C_Login, C_FindObjectsInit, C_EncryptInit,
 *             C_Encrypt, C_SignInit, C_Sign, C_GenerateRandom
 *   WHICH     N (the N-th call of that function in this process, from 1) or * (every call)
 *   ACTION    a CK_RV (0x30, 48): the call returns it without the real module doing the call;
 *             or sleep=MS: the call sleeps MS milliseconds, then goes on (to the next matching
 *             rule, else to the real module)
 * for example "C_Encrypt:3:0x30,C_GenerateRandom:*:sleep=300".
 *
 * A C_Encrypt or C_Sign that fails ends its operation, as PKCS#11 requires of any result other
 * than CKR_OK and CKR_BUFFER_TOO_SMALL: the wrapper finishes the real module's operation into a
 * scratch buffer it then discards, so that the real module does not keep it open behind the
 * error (like a device that lost its answer).
 *
 * Outage mode, for tests/upstream_reconnect.rs: with FAULTY_OUTAGE_FILE set, while that file
 * exists the device is "away": every wrapped call (C_Initialize included) returns
 * FAULTY_OUTAGE_RV (default 0x32, CKR_DEVICE_REMOVED) without the real module doing it. When
 * the file is gone the device is back, having lost its state: the first call after the outage
 * finalises and initialises the real module again (with the arguments of the last successful
 * C_Initialize), so the sessions and logins of before are gone, unless the caller went through
 * C_Finalize and C_Initialize itself. C_Finalize always reaches the real module. The exported
 * faulty_outage_answers() counts the calls answered with the outage code, C_Initialize apart,
 * and faulty_outage_initializes() the C_Initialize calls refused: a test that loaded this
 * module can read them with dlsym.
 *
 * The schedule and the real module are read once per process, by whichever of C_GetFunctionList
 * and C_Initialize runs first. Call counters are atomic, so any number of threads may call.
 * A schedule that cannot be parsed, or a real module that cannot be loaded, makes
 * C_GetFunctionList and C_Initialize return CKR_GENERAL_ERROR, with a line on stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))

enum fn {
    F_INITIALIZE,
    F_OPEN_SESSION,
    F_LOGIN,
    F_FIND_OBJECTS_INIT,
    F_ENCRYPT_INIT,
    F_ENCRYPT,
    F_SIGN_INIT,
    F_SIGN,
    F_GENERATE_RANDOM,
    F_COUNT
};

static const char *const fn_names[F_COUNT] = {
    "C_Initialize",  "C_OpenSession", "C_Login", "C_FindObjectsInit", "C_EncryptInit",
    "C_Encrypt",     "C_SignInit",    "C_Sign",  "C_GenerateRandom",
};

struct rule {
    enum fn fn;
    unsigned long nth; /* 0: every call */
    int is_sleep;
    unsigned long value; /* the CK_RV, or the milliseconds to sleep */
};

#define MAX_RULES 32
static struct rule rules[MAX_RULES];
static size_t rule_count;
static atomic_ulong calls[F_COUNT];

static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST patched;
static int setup_ok;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;

static const char *outage_file;
static CK_RV outage_rv = CKR_DEVICE_REMOVED;
static atomic_int lost;                   /* the device was away; its state is gone */
static atomic_ulong outage_answers;       /* calls answered with outage_rv, C_Initialize apart */
static atomic_ulong outage_initializes;   /* C_Initialize calls answered with outage_rv */
static pthread_mutex_t reset_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_C_INITIALIZE_ARGS saved_args;
static int have_saved_args;

EXPORT unsigned long faulty_outage_answers(void)
{
    return atomic_load(&outage_answers);
}

EXPORT unsigned long faulty_outage_initializes(void)
{
    return atomic_load(&outage_initializes);
}

static int outage_active(void)
{
    return outage_file != NULL && access(outage_file, F_OK) == 0;
}

/* 1 and *rv while the device is away; otherwise 0, after resetting the real module once if the
 * device came back from an outage. */
static int outage(CK_RV *rv)
{
    int away = outage_active();
    if (!away && atomic_load(&lost)) {
        /* Looked again under the lock: the "not away" above may predate the outage that
         * another thread has just seen begin (lost is only set once the file exists). */
        pthread_mutex_lock(&reset_lock);
        away = outage_active();
        if (!away && atomic_exchange(&lost, 0)) {
            real->C_Finalize(NULL);
            real->C_Initialize(have_saved_args ? (void *)&saved_args : NULL);
        }
        pthread_mutex_unlock(&reset_lock);
    }
    if (away) {
        atomic_store(&lost, 1);
        atomic_fetch_add(&outage_answers, 1);
        *rv = outage_rv;
        return 1;
    }
    return 0;
}

static int parse_schedule(const char *text)
{
    char *copy = strdup(text);
    if (copy == NULL)
        return 0;
    int ok = 1;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item != NULL && ok;
         item = strtok_r(NULL, ",", &save)) {
        if (*item == '\0')
            continue;
        char *c1 = strchr(item, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL || rule_count == MAX_RULES) {
            ok = 0;
            break;
        }
        *c1 = '\0';
        *c2 = '\0';
        struct rule r = {0};
        size_t f;
        for (f = 0; f < F_COUNT && strcmp(fn_names[f], item) != 0; f++)
            ;
        if (f == F_COUNT) {
            ok = 0;
            break;
        }
        r.fn = (enum fn)f;
        char *end;
        if (strcmp(c1 + 1, "*") == 0) {
            r.nth = 0;
        } else {
            errno = 0;
            r.nth = strtoul(c1 + 1, &end, 10);
            if (errno != 0 || *end != '\0' || end == c1 + 1 || r.nth == 0) {
                ok = 0;
                break;
            }
        }
        const char *action = c2 + 1;
        if (strncmp(action, "sleep=", 6) == 0) {
            r.is_sleep = 1;
            action += 6;
        }
        errno = 0;
        r.value = strtoul(action, &end, 0);
        if (errno != 0 || *end != '\0' || end == action) {
            ok = 0;
            break;
        }
        rules[rule_count++] = r;
    }
    free(copy);
    return ok;
}

/* The schedule's verdict on this call: 1 and *rv when it is to fail, 0 when it is to go on. */
static int fault(enum fn fn, CK_RV *rv)
{
    unsigned long n = atomic_fetch_add(&calls[fn], 1) + 1;
    for (size_t i = 0; i < rule_count; i++) {
        const struct rule *r = &rules[i];
        if (r->fn != fn || (r->nth != 0 && r->nth != n))
            continue;
        if (r->is_sleep) {
            struct timespec ts = {(time_t)(r->value / 1000), (long)(r->value % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        } else {
            *rv = r->value;
            return 1;
        }
    }
    return 0;
}

static CK_RV w_initialize(void *args);
static CK_RV w_finalize(void *reserved);
static CK_RV w_open_session(CK_SLOT_ID, CK_FLAGS, void *, CK_NOTIFY, CK_SESSION_HANDLE_PTR);
static CK_RV w_login(CK_SESSION_HANDLE, CK_USER_TYPE, CK_UTF8CHAR_PTR, CK_ULONG);
static CK_RV w_find_objects_init(CK_SESSION_HANDLE, CK_ATTRIBUTE_PTR, CK_ULONG);
static CK_RV w_encrypt_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
static CK_RV w_encrypt(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
static CK_RV w_sign_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
static CK_RV w_sign(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
static CK_RV w_generate_random(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG);
static CK_RV w_get_function_list(CK_FUNCTION_LIST_PTR_PTR list);
static CK_RV w_get_slot_list(CK_BBOOL, CK_SLOT_ID_PTR, CK_ULONG_PTR);
static CK_RV w_get_slot_info(CK_SLOT_ID, CK_SLOT_INFO_PTR);
static CK_RV w_get_token_info(CK_SLOT_ID, CK_TOKEN_INFO_PTR);
static CK_RV w_get_mechanism_list(CK_SLOT_ID, CK_MECHANISM_TYPE_PTR, CK_ULONG_PTR);
static CK_RV w_get_mechanism_info(CK_SLOT_ID, CK_MECHANISM_TYPE, CK_MECHANISM_INFO_PTR);
static CK_RV w_close_session(CK_SESSION_HANDLE);
static CK_RV w_close_all_sessions(CK_SLOT_ID);
static CK_RV w_get_session_info(CK_SESSION_HANDLE, CK_SESSION_INFO_PTR);
static CK_RV w_logout(CK_SESSION_HANDLE);
static CK_RV w_find_objects(CK_SESSION_HANDLE, CK_OBJECT_HANDLE_PTR, CK_ULONG, CK_ULONG_PTR);
static CK_RV w_find_objects_final(CK_SESSION_HANDLE);
static CK_RV w_get_attribute_value(CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_ATTRIBUTE_PTR,
                                   CK_ULONG);
static CK_RV w_decrypt_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
static CK_RV w_decrypt(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);
static CK_RV w_verify_init(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE);
static CK_RV w_verify(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG);
static CK_RV w_generate_key(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_ATTRIBUTE_PTR, CK_ULONG,
                            CK_OBJECT_HANDLE_PTR);

static void setup(void)
{
    const char *schedule = getenv("FAULTY_SCHEDULE");
    if (schedule != NULL && !parse_schedule(schedule)) {
        fprintf(stderr, "faulty: cannot parse FAULTY_SCHEDULE=\"%s\"\n", schedule);
        return;
    }
    outage_file = getenv("FAULTY_OUTAGE_FILE");
    const char *code = getenv("FAULTY_OUTAGE_RV");
    if (code != NULL) {
        char *end;
        errno = 0;
        outage_rv = strtoul(code, &end, 0);
        if (errno != 0 || *end != '\0' || end == code) {
            fprintf(stderr, "faulty: cannot parse FAULTY_OUTAGE_RV=\"%s\"\n", code);
            return;
        }
    }
    const char *path = getenv("FAULTY_REAL");
    if (path == NULL) {
        fprintf(stderr, "faulty: FAULTY_REAL is not set\n");
        return;
    }
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "faulty: dlopen %s: %s\n", path, dlerror());
        return;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "faulty: %s has no usable C_GetFunctionList\n", path);
        return;
    }
    patched = *real;
    patched.C_GetFunctionList = w_get_function_list;
    patched.C_Initialize = w_initialize;
    patched.C_Finalize = w_finalize;
    patched.C_OpenSession = w_open_session;
    patched.C_Login = w_login;
    patched.C_FindObjectsInit = w_find_objects_init;
    patched.C_EncryptInit = w_encrypt_init;
    patched.C_Encrypt = w_encrypt;
    patched.C_SignInit = w_sign_init;
    patched.C_Sign = w_sign;
    patched.C_GenerateRandom = w_generate_random;
    patched.C_GetSlotList = w_get_slot_list;
    patched.C_GetSlotInfo = w_get_slot_info;
    patched.C_GetTokenInfo = w_get_token_info;
    patched.C_GetMechanismList = w_get_mechanism_list;
    patched.C_GetMechanismInfo = w_get_mechanism_info;
    patched.C_CloseSession = w_close_session;
    patched.C_CloseAllSessions = w_close_all_sessions;
    patched.C_GetSessionInfo = w_get_session_info;
    patched.C_Logout = w_logout;
    patched.C_FindObjects = w_find_objects;
    patched.C_FindObjectsFinal = w_find_objects_final;
    patched.C_GetAttributeValue = w_get_attribute_value;
    patched.C_DecryptInit = w_decrypt_init;
    patched.C_Decrypt = w_decrypt;
    patched.C_VerifyInit = w_verify_init;
    patched.C_Verify = w_verify;
    patched.C_GenerateKey = w_generate_key;
    setup_ok = 1;
}

static int ready(void)
{
    pthread_once(&setup_once, setup);
    return setup_ok;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!ready())
        return CKR_GENERAL_ERROR;
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    *list = &patched;
    return CKR_OK;
}

static CK_RV w_get_function_list(CK_FUNCTION_LIST_PTR_PTR list)
{
    return C_GetFunctionList(list);
}

static CK_RV w_initialize(void *args)
{
    CK_RV rv;
    if (!ready())
        return CKR_GENERAL_ERROR;
    if (outage_active()) {
        atomic_store(&lost, 1);
        atomic_fetch_add(&outage_initializes, 1);
        return outage_rv;
    }
    if (fault(F_INITIALIZE, &rv))
        return rv;
    rv = real->C_Initialize(args);
    if (rv == CKR_OK) {
        /* Whatever the device lost, this is a fresh start. */
        atomic_store(&lost, 0);
        if (args != NULL) {
            saved_args = *(CK_C_INITIALIZE_ARGS *)args;
            have_saved_args = 1;
        }
    }
    return rv;
}

static CK_RV w_finalize(void *reserved)
{
    atomic_store(&lost, 0);
    return real->C_Finalize(reserved);
}

static CK_RV w_open_session(CK_SLOT_ID slot, CK_FLAGS flags, void *app, CK_NOTIFY notify,
                            CK_SESSION_HANDLE_PTR session)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_OPEN_SESSION, &rv))
        return rv;
    return real->C_OpenSession(slot, flags, app, notify, session);
}

static CK_RV w_login(CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                     CK_ULONG pin_len)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_LOGIN, &rv))
        return rv;
    return real->C_Login(session, user, pin, pin_len);
}

static CK_RV w_find_objects_init(CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR templ,
                                 CK_ULONG count)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_FIND_OBJECTS_INIT, &rv))
        return rv;
    return real->C_FindObjectsInit(session, templ, count);
}

static CK_RV w_encrypt_init(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech,
                            CK_OBJECT_HANDLE key)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_ENCRYPT_INIT, &rv))
        return rv;
    return real->C_EncryptInit(session, mech, key);
}

typedef CK_RV (*single_part_fn)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR,
                                CK_ULONG_PTR);

/* Ends the real module's operation behind an injected failure: its result goes to a scratch
 * buffer, never to the caller's. */
static void end_real_operation(single_part_fn f, CK_SESSION_HANDLE session, CK_BYTE_PTR data,
                               CK_ULONG len)
{
    CK_ULONG out_len = 0;
    if (f(session, data, len, NULL, &out_len) != CKR_OK)
        return; /* an error: the real module has ended the operation itself */
    CK_BYTE_PTR scratch = malloc(out_len ? out_len : 1);
    if (scratch == NULL)
        return;
    f(session, data, len, scratch, &out_len);
    free(scratch);
}

static CK_RV w_encrypt(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len,
                       CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_RV rv;
    if (outage(&rv))
        return rv;
    if (fault(F_ENCRYPT, &rv)) {
        end_real_operation(real->C_Encrypt, session, data, len);
        return rv;
    }
    return real->C_Encrypt(session, data, len, out, out_len);
}

static CK_RV w_sign_init(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_SIGN_INIT, &rv))
        return rv;
    return real->C_SignInit(session, mech, key);
}

static CK_RV w_sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len, CK_BYTE_PTR out,
                    CK_ULONG_PTR out_len)
{
    CK_RV rv;
    if (outage(&rv))
        return rv;
    if (fault(F_SIGN, &rv)) {
        end_real_operation(real->C_Sign, session, data, len);
        return rv;
    }
    return real->C_Sign(session, data, len, out, out_len);
}

static CK_RV w_generate_random(CK_SESSION_HANDLE session, CK_BYTE_PTR out, CK_ULONG len)
{
    CK_RV rv;
    if (outage(&rv) || fault(F_GENERATE_RANDOM, &rv))
        return rv;
    return real->C_GenerateRandom(session, out, len);
}

/* Calls that only the outage mode touches. */
#define PASS(call)                                                                                \
    do {                                                                                          \
        CK_RV rv_;                                                                                \
        if (outage(&rv_))                                                                         \
            return rv_;                                                                           \
        return real->call;                                                                        \
    } while (0)

static CK_RV w_get_slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    PASS(C_GetSlotList(present, list, count));
}

static CK_RV w_get_slot_info(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
    PASS(C_GetSlotInfo(slot, info));
}

static CK_RV w_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    PASS(C_GetTokenInfo(slot, info));
}

static CK_RV w_get_mechanism_list(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list,
                                  CK_ULONG_PTR count)
{
    PASS(C_GetMechanismList(slot, list, count));
}

static CK_RV w_get_mechanism_info(CK_SLOT_ID slot, CK_MECHANISM_TYPE type,
                                  CK_MECHANISM_INFO_PTR info)
{
    PASS(C_GetMechanismInfo(slot, type, info));
}

static CK_RV w_close_session(CK_SESSION_HANDLE session)
{
    PASS(C_CloseSession(session));
}

static CK_RV w_close_all_sessions(CK_SLOT_ID slot)
{
    PASS(C_CloseAllSessions(slot));
}

static CK_RV w_get_session_info(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info)
{
    PASS(C_GetSessionInfo(session, info));
}

static CK_RV w_logout(CK_SESSION_HANDLE session)
{
    PASS(C_Logout(session));
}

static CK_RV w_find_objects(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE_PTR found, CK_ULONG max,
                            CK_ULONG_PTR count)
{
    PASS(C_FindObjects(session, found, max, count));
}

static CK_RV w_find_objects_final(CK_SESSION_HANDLE session)
{
    PASS(C_FindObjectsFinal(session));
}

static CK_RV w_get_attribute_value(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                                   CK_ATTRIBUTE_PTR templ, CK_ULONG count)
{
    PASS(C_GetAttributeValue(session, object, templ, count));
}

static CK_RV w_decrypt_init(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech,
                            CK_OBJECT_HANDLE key)
{
    PASS(C_DecryptInit(session, mech, key));
}

static CK_RV w_decrypt(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len,
                       CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    PASS(C_Decrypt(session, data, len, out, out_len));
}

static CK_RV w_verify_init(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech,
                           CK_OBJECT_HANDLE key)
{
    PASS(C_VerifyInit(session, mech, key));
}

static CK_RV w_verify(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG len,
                      CK_BYTE_PTR sig, CK_ULONG sig_len)
{
    PASS(C_Verify(session, data, len, sig, sig_len));
}

static CK_RV w_generate_key(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mech,
                            CK_ATTRIBUTE_PTR templ, CK_ULONG count, CK_OBJECT_HANDLE_PTR key)
{
    PASS(C_GenerateKey(session, mech, templ, count, key));
}
