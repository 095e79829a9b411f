/*
 * A PKCS#11 module for the fault tests: it forwards every call to SoftHSM2
 * (or the module named by $SEALBROKER_CRASH_TARGET) and dies with a real
 * SIGSEGV in C_Encrypt while the file named by $SEALBROKER_CRASH_TRIGGER
 * exists. While the file named by $SEALBROKER_HANG_TRIGGER exists, C_Encrypt
 * appends one byte to it (so a test can count the calls held) and does not
 * return until it is removed: a device that stops answering. Built by the
 * test harness (tests/src/lib.rs, crashy_module) with the system C
 * compiler, which Rust already needs as its linker.
 *
 * Only the function list is interposed: C_GetFunctionList returns a copy
 * of SoftHSM's list with C_Encrypt (and C_GetFunctionList) replaced. The
 * layout is PKCS#11 2.40's CK_FUNCTION_LIST: a two-byte version, then 68
 * function pointers, C_Encrypt the 31st.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#define FUNCTIONS 68
#define GET_FUNCTION_LIST 3
#define ENCRYPT 30
#define CKR_OK 0UL
#define CKR_GENERAL_ERROR 5UL
#define CKR_ARGUMENTS_BAD 7UL

typedef unsigned long ck_rv;
typedef unsigned long ck_ulong;

struct function_list {
    unsigned char version[2];
    void *functions[FUNCTIONS];
};

typedef ck_rv (*encrypt_fn)(ck_ulong, unsigned char *, ck_ulong, unsigned char *, ck_ulong *);
typedef ck_rv (*get_function_list_fn)(struct function_list **);

static struct function_list forwarded;
static encrypt_fn real_encrypt;

static ck_rv crashy_encrypt(ck_ulong session, unsigned char *data, ck_ulong len,
                            unsigned char *out, ck_ulong *out_len)
{
    const char *trigger = getenv("SEALBROKER_CRASH_TRIGGER");
    if (trigger != NULL && access(trigger, F_OK) == 0) {
        volatile int *nowhere = NULL;
        *nowhere = 1; /* the crash a buggy vendor module would have */
    }
    const char *hang = getenv("SEALBROKER_HANG_TRIGGER");
    if (hang != NULL) {
        int fd = open(hang, O_WRONLY | O_APPEND);
        if (fd >= 0) {
            ssize_t written = write(fd, "h", 1);
            close(fd);
            while (written == 1 && access(hang, F_OK) == 0)
                usleep(10000); /* the device that stopped answering */
        }
    }
    return real_encrypt(session, data, len, out, out_len);
}

ck_rv C_GetFunctionList(struct function_list **list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    if (real_encrypt == NULL) {
        const char *target = getenv("SEALBROKER_CRASH_TARGET");
        void *module = dlopen(target != NULL ? target : "/usr/lib/softhsm/libsofthsm2.so",
                              RTLD_NOW | RTLD_LOCAL);
        if (module == NULL)
            return CKR_GENERAL_ERROR;
        get_function_list_fn get = (get_function_list_fn)dlsym(module, "C_GetFunctionList");
        struct function_list *real = NULL;
        if (get == NULL || get(&real) != CKR_OK || real == NULL)
            return CKR_GENERAL_ERROR;
        forwarded = *real;
        forwarded.functions[ENCRYPT] = (void *)crashy_encrypt;
        forwarded.functions[GET_FUNCTION_LIST] = (void *)C_GetFunctionList;
        real_encrypt = (encrypt_fn)real->functions[ENCRYPT];
    }
    *list = &forwarded;
    return CKR_OK;
}
