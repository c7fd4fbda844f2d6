/*
 * nfs-guard lab: LD_PRELOAD shim that lets Debian 12's user-mode-linux (6.1) run on hosts whose XSAVE
 * area is larger than the 832 bytes UML 6.1 knows (AVX-512, AMX: this lab's CI machine).
 *
 * UML saves and restores its processes' FP state with PTRACE_GETREGSET/SETREGSET NT_X86_XSTATE and
 * an 832-byte buffer (legacy area + XSAVE header + AVX). The host kernel truncates the GET fine but
 * refuses a SET whose size is not its full XSAVE size (EFAULT): the guest's init dies with
 * "userspace - ptrace set fp regs failed, errno = 14" (fixed upstream in later UML kernels, which
 * size the buffer at run time).
 *
 * This shim keeps a full-size shadow copy per UML buffer (keyed by the buffer's address, which is
 * per guest thread): a GET fills the shadow and hands UML its prefix; a SET overlays UML's prefix
 * (which UML may have changed, e.g. for a signal frame) on the shadow and sets the full state. So a
 * guest thread's AVX-512/AMX state survives its preemption too. A buffer without a shadow (a copy
 * made at fork) gets the tracee's current upper state. Every other ptrace call passes through.
 *
 * Build: cc -O2 -shared -fPIC -o uml-xstate.so uml-xstate.c -ldl (scripts/lab.sh does).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

#define SLOTS 2048
#define MAX_XSTATE 16384

struct slot {
    const void *key;
    unsigned char buf[MAX_XSTATE];
};

static struct slot slots[SLOTS]; /* bss: pages are touched only when used */
static size_t full_size;          /* the host's XSAVE size for ptrace; 0 = not known yet */

static long raw_ptrace(long req, pid_t pid, void *addr, void *data) {
    return syscall(SYS_ptrace, req, pid, addr, data);
}

static struct slot *slot_for(const void *key) {
    uintptr_t h = (uintptr_t)key;
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15ULL;
    return &slots[(h >> 32) % SLOTS];
}

/* Full XSAVE state of pid into buf (MAX_XSTATE bytes); learns full_size. */
static int get_full(pid_t pid, unsigned char *buf) {
    struct iovec iov = {buf, MAX_XSTATE};
    if (raw_ptrace(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov) != 0) return -1;
    full_size = iov.iov_len;
    return 0;
}

long ptrace(enum __ptrace_request request, ...) {
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);

    if ((request == PTRACE_GETREGSET || request == PTRACE_SETREGSET) &&
        (uintptr_t)addr == NT_X86_XSTATE && data != NULL) {
        struct iovec *uiov = data;
        if (full_size == 0 || uiov->iov_len < full_size) {
            struct slot *s = slot_for(uiov->iov_base);
            if (request == PTRACE_GETREGSET) {
                if (get_full(pid, s->buf) != 0) return -1;
                s->key = uiov->iov_base;
                size_t n = uiov->iov_len < full_size ? uiov->iov_len : full_size;
                memcpy(uiov->iov_base, s->buf, n);
                uiov->iov_len = n;
                return 0;
            }
            if (s->key != uiov->iov_base) {
                if (get_full(pid, s->buf) != 0) return -1;
                s->key = uiov->iov_base;
            }
            if (uiov->iov_len < full_size) {
                memcpy(s->buf, uiov->iov_base, uiov->iov_len);
                struct iovec iov = {s->buf, full_size};
                return raw_ptrace(PTRACE_SETREGSET, pid, addr, &iov);
            }
        }
    }

    static long (*real)(enum __ptrace_request, ...);
    if (real == NULL) real = (long (*)(enum __ptrace_request, ...))dlsym(RTLD_NEXT, "ptrace");
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    return real(request, pid, addr, data);
}
