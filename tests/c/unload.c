/*
 * unload.c - an application that initialises the module, opens a session, and dlclose()s the
 * module without C_Finalize, then exits. It must exit cleanly: the upstream stays loaded and
 * holds p11gate's mutex callbacks, so p11gate must stay mapped (it is linked -z nodelete).
 *
 * usage: unload MODULE.so            prints "unloaded, exiting" and exits 0
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

#include "p11gate.h"

int main(int argc, char **argv)
{
    CK_C_GetFunctionList get_list;
    CK_FUNCTION_LIST_PTR f = NULL;
    CK_C_INITIALIZE_ARGS args = {0};
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    CK_SESSION_HANDLE h;
    CK_RV rv;
    void *lib;

    if (argc != 2) {
        fprintf(stderr, "usage: unload MODULE.so\n");
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    *(void **)&get_list = dlsym(lib, "C_GetFunctionList");
    if (!get_list || get_list(&f) != CKR_OK) {
        fprintf(stderr, "C_GetFunctionList failed\n");
        return 1;
    }
    args.flags = CKF_OS_LOCKING_OK;
    rv = f->C_Initialize(&args);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_Initialize: 0x%lx\n", rv);
        return 1;
    }
    rv = f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK || n == 0) {
        fprintf(stderr, "C_GetSlotList: 0x%lx, %lu slots\n", rv, n);
        return 1;
    }
    rv = f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        fprintf(stderr, "C_OpenSession: 0x%lx\n", rv);
        return 1;
    }
    dlclose(lib);
    printf("unloaded, exiting\n");
    return 0;
}
