/*
 * cycles.c - C_Initialize ... C_Finalize, again and again, in one process.
 *
 * usage: cycles [-l LABEL] [-p PIN] [-n CYCLES] [-m AT]... MODULE.so
 *        (PIN default: $P11_USER_PIN; CYCLES default: 1000)
 *
 * Each cycle initialises the module, finds the token, opens a session, logs in, draws random
 * bytes, makes a session AES key, encrypts and decrypts with it, logs out, closes the session and
 * finalises. After the cycles given with -m (and after the last) it prints the process's resident
 * memory and open file descriptors:
 *     measure: cycle=50 rss_kib=12345 fds=7
 * which the caller compares (memory and descriptors must stay flat: runtimes are interned per
 * configuration, so a cycle allocates nothing that outlives it).
 *
 * A check is counted for every call; only failures are printed (with their cycle). The program
 * ends with "N passed, N failed" and exits 1 when any check failed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "p11gate.h"

#define MAX_MEASURES 16

static unsigned passed, failed, cycle;

static int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int check(int ok, const char *fmt, ...)
{
    va_list ap;
    if (ok) {
        passed++;
        return ok;
    }
    failed++;
    printf("FAIL - cycle %u: ", cycle);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    return ok;
}

static int check_rv(const char *what, CK_RV got)
{
    return check(got == CKR_OK, "%s: expected CKR_OK, got 0x%lx", what, (unsigned long)got);
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
    if (!check_rv("C_GetSlotList", F->C_GetSlotList(CK_TRUE, slots, &n)))
        return 0;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(slots[i], &ti) == CKR_OK && label_matches(ti.label, label)) {
            *out = slots[i];
            return 1;
        }
    }
    return check(0, "token \"%s\" found", label);
}

static long rss_kib(void)
{
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

static int open_fds(void)
{
    int n = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static void one_cycle(void)
{
    static const CK_BYTE plain[32] = "cycles plaintext, 32 bytes long.";
    static CK_BYTE iv[16] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6};
    CK_C_INITIALIZE_ARGS a;
    CK_SLOT_ID slot = 0;
    CK_SESSION_HANDLE h = 0;
    CK_OBJECT_HANDLE key = 0;
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
    CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
    CK_BYTE rnd[16], ct[64], back[64];
    CK_ULONG ctlen = sizeof ct, backlen = sizeof back;

    memset(&a, 0, sizeof a);
    a.flags = CKF_OS_LOCKING_OK;
    if (!check_rv("C_Initialize", F->C_Initialize(&a)))
        return;
    if (!find_slot(&slot))
        goto finalize;
    if (!check_rv("C_OpenSession",
                  F->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h)))
        goto finalize;
    if (!check_rv("C_Login", F->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin))))
        goto close;
    check_rv("C_GenerateRandom", F->C_GenerateRandom(h, rnd, sizeof rnd));
    if (check_rv("C_GenerateKey", F->C_GenerateKey(h, &keygen, tmpl, 6, &key)) &&
        check_rv("C_EncryptInit", F->C_EncryptInit(h, &cbc, key)) &&
        check_rv("C_Encrypt", F->C_Encrypt(h, (CK_BYTE_PTR)plain, sizeof plain, ct, &ctlen)) &&
        check_rv("C_DecryptInit", F->C_DecryptInit(h, &cbc, key)) &&
        check_rv("C_Decrypt", F->C_Decrypt(h, ct, ctlen, back, &backlen)))
        check(backlen == sizeof plain && memcmp(back, plain, sizeof plain) == 0,
              "decrypted text equals the plaintext");
    check_rv("C_Logout", F->C_Logout(h));
close:
    check_rv("C_CloseSession", F->C_CloseSession(h));
finalize:
    check_rv("C_Finalize", F->C_Finalize(NULL));
}

int main(int argc, char **argv)
{
    int c;
    unsigned cycles = 1000, measures[MAX_MEASURES], nmeasures = 0, next = 0;
    void *module;
    CK_C_GetFunctionList gfl;

    while ((c = getopt(argc, argv, "l:p:n:m:")) != -1) {
        switch (c) {
        case 'l': label = optarg; break;
        case 'p': pin = optarg; break;
        case 'n': cycles = (unsigned)atoi(optarg); break;
        case 'm':
            if (nmeasures == MAX_MEASURES)
                goto usage;
            measures[nmeasures++] = (unsigned)atoi(optarg);
            break;
        default: goto usage;
        }
    }
    if (!pin)
        pin = getenv("P11_USER_PIN");
    if (optind + 1 != argc || !label || !pin || cycles < 1)
        goto usage;

    module = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
    if (!check(module != NULL, "dlopen %s: %s", argv[optind], dlerror()))
        goto done;
    gfl = (CK_C_GetFunctionList)dlsym(module, "C_GetFunctionList");
    if (!check(gfl != NULL, "C_GetFunctionList is exported") ||
        !check_rv("C_GetFunctionList", gfl(&F)))
        goto done;

    for (cycle = 1; cycle <= cycles; cycle++) {
        one_cycle();
        while (next < nmeasures && measures[next] < cycle)
            next++;
        if ((next < nmeasures && measures[next] == cycle) || cycle == cycles) {
            printf("measure: cycle=%u rss_kib=%ld fds=%d\n", cycle, rss_kib(), open_fds());
            fflush(stdout);
        }
    }
done:
    printf("%u passed, %u failed\n", passed, failed);
    return failed ? 1 : 0;
usage:
    fprintf(stderr, "usage: %s [-l LABEL] [-p PIN] [-n CYCLES] [-m AT]... MODULE.so\n", argv[0]);
    return 2;
}
