"""cffi builder for ``aiobind._native`` (out-of-line API mode, built at install time).

The C helpers below exist so that one Python call crosses into C once: preparing an
iocb, pointing it at our eventfd and submitting it is a single call, and reaping copies
the completions into flat arrays that Python indexes without touching struct fields.
The few ``prctl`` calls live here too: the standard library has no ``prctl``.
"""

from cffi import FFI

# Where aiob_replay counts what it answered; declared once for the cdef and the source.
TALLY = """struct aiob_tally {
    unsigned long long *cells;
    long hist;
    long sum_us;
    int nbounds;
    double bounds[32];
};
"""

CDEF = (
    """
typedef struct io_context *io_context_t;
struct iocb { ...; };

int aiob_setup(unsigned nr, io_context_t *ctx);
int aiob_destroy(io_context_t ctx);
void aiob_prep_read(struct iocb *slab, long slot, int fd, void *buf, size_t len,
                    long long offset, int efd);
int aiob_submit_slots(io_context_t ctx, struct iocb *slab, struct iocb **ptrs,
                      const long *slots, long n);
int aiob_submit_one(io_context_t ctx, struct iocb *slab, long slot, int fd, void *buf,
                    size_t len, long long offset, int efd);
int aiob_reap(io_context_t ctx, long min_nr, long max_nr, struct io_event *events,
              long long timeout_ns, long *out_slots, long long *out_res);
int aiob_openat2(int dirfd, const char *path, unsigned long long flags,
                 unsigned long long mode, unsigned long long resolve);

int aiob_set_pdeathsig(int signo);
int aiob_get_pdeathsig(void);
int aiob_set_comm(const char *name);
int aiob_get_comm(char *out);
int aiob_cachestat(int fd, unsigned long long off, unsigned long long len,
                   unsigned long long *out);
"""
    + TALLY
    + """int aiob_replay(int sock, char *buf, size_t cap, const char *want, size_t want_len,
                const char *head, size_t head_len, int file, long long start,
                long long stop, long long *out, struct aiob_tally *tally,
                const long *cells, double began);
int aiob_replay_read(int sock, char *buf, size_t cap, const char *want, size_t want_len,
                     const char *head, size_t head_len, io_context_t ctx, struct iocb *cb,
                     int efd, char *data, int file, long long start, long long stop,
                     long long *out, struct aiob_tally *tally, const long *cells,
                     double began);

unsigned long aiob_tls_bind(const char *path);
int aiob_tls_owns(void *ssl, int fd, void *owner);
int aiob_tls_replay(void *ssl, char *buf, size_t first, size_t cap, const char *want,
                    size_t want_len, const char *head, size_t head_len, io_context_t ctx,
                    struct iocb *cb, int efd, char *data, size_t data_cap, int file,
                    long long start, long long stop, long long *out,
                    struct aiob_tally *tally, const long *cells, double began);

#define RESOLVE_NO_XDEV ...
#define RESOLVE_NO_MAGICLINKS ...
#define RESOLVE_NO_SYMLINKS ...
#define RESOLVE_BENEATH ...
#define RESOLVE_IN_ROOT ...
"""
)

SOURCE = (
    r"""
#include <dlfcn.h>
#include <errno.h>
#include <libaio.h>
#include <linux/openat2.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int aiob_setup(unsigned nr, io_context_t *ctx) {
    *ctx = 0;
    return io_setup(nr, ctx);
}

static int aiob_destroy(io_context_t ctx) { return io_destroy(ctx); }

static void aiob_prep_read(struct iocb *slab, long slot, int fd, void *buf, size_t len,
                           long long offset, int efd) {
    struct iocb *cb = &slab[slot];
    io_prep_pread(cb, fd, buf, len, offset);
    if (efd >= 0)
        io_set_eventfd(cb, efd);
    /* the slot index comes back in the completion: no pointer games in Python */
    cb->data = (void *)(intptr_t)slot;
}

static int aiob_submit_slots(io_context_t ctx, struct iocb *slab, struct iocb **ptrs,
                             const long *slots, long n) {
    for (long i = 0; i < n; i++)
        ptrs[i] = &slab[slots[i]];
    return io_submit(ctx, n, ptrs);
}

static int aiob_submit_one(io_context_t ctx, struct iocb *slab, long slot, int fd, void *buf,
                           size_t len, long long offset, int efd) {
    struct iocb *cb = &slab[slot];
    aiob_prep_read(slab, slot, fd, buf, len, offset, efd);
    return io_submit(ctx, 1, &cb);
}

static int aiob_reap(io_context_t ctx, long min_nr, long max_nr, struct io_event *events,
                     long long timeout_ns, long *out_slots, long long *out_res) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    int n = io_getevents(ctx, min_nr, max_nr, events, tsp);
    for (int i = 0; i < n; i++) {
        out_slots[i] = (long)(intptr_t)events[i].data;
        /* io_event.res is unsigned in the header: a negative errno hides in it */
        out_res[i] = (long long)(long)events[i].res;
    }
    return n;
}

static int aiob_openat2(int dirfd, const char *path, unsigned long long flags,
                        unsigned long long mode, unsigned long long resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

/* cachestat(2), Linux 6.5+ (451 on every architecture): page-cache state of a range.
   out[0..4] = cache, dirty, writeback, evicted, recently_evicted (pages). */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct aiob_cachestat_range { unsigned long long off, len; };
static int aiob_cachestat(int fd, unsigned long long off, unsigned long long len,
                          unsigned long long *out) {
    struct aiob_cachestat_range range = { off, len };
    unsigned long long cs[5] = { 0, 0, 0, 0, 0 };
    long rc = syscall(__NR_cachestat, fd, &range, cs, 0);
    if (rc < 0)
        return -errno;
    for (int i = 0; i < 5; i++)
        out[i] = cs[i];
    return 0;
}

/* Counting an answered replay where the caller's metrics live: `cells` is a counter slot
   of 64-bit cells (one writer: this thread), cells[0..2] of the call say which cells
   count the response, its body bytes and its way; the duration since `began`
   (CLOCK_MONOTONIC seconds, what Python's time.monotonic reads) goes into the
   histogram cells from `hist` (bucket i counts durations <= bounds[i], the last one
   the rest) and into the microseconds at `sum_us`. */
"""
    + TALLY
    + r"""
static void replay_tally(struct aiob_tally *t, const long *cells, double began,
                         long long sent) {
    if (t == NULL || t->cells == NULL || cells == NULL)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double took = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 - began;
    if (took < 0)
        took = 0;
    int b = 0;
    while (b < t->nbounds && t->bounds[b] < took)
        b++;
    unsigned long long *c = t->cells;
    c[cells[0]] += 1;
    c[cells[1]] += (unsigned long long)sent;
    c[cells[2]] += 1;
    c[t->hist + b] += 1;
    c[t->sum_us] += (unsigned long long)(took * 1e6 + 0.5);
}

static int replay_recv(int sock, char *buf, size_t cap, const char *want, size_t want_len,
                       long long start, long long *out) {
    ssize_t n;
    do
        n = recv(sock, buf, cap, 0);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return n < 0 ? -errno : 0;
    out[0] = n;
    out[1] = 0;
    out[2] = start;
    out[3] = 0;
    if ((size_t)n != want_len || memcmp(buf, want, want_len) != 0)
        return 1;
    return 2;
}

/* One buffered read of [start, start + len) into `data` through `ctx` (a context of the
   caller's, for this alone), its completion signalled on `efd` as every AIO read of the
   worker is, and reaped: 1 when every byte came. Buffered, io_submit does the read
   inside the call, as the Python path's reap_now assumes. */
static int replay_read_aio(io_context_t ctx, struct iocb *cb, int efd, int file, char *data,
                           size_t len, long long start) {
    io_prep_pread(cb, file, data, len, start);
    io_set_eventfd(cb, efd);
    struct iocb *cbs[1] = { cb };
    if (io_submit(ctx, 1, cbs) != 1)
        return 0;
    struct io_event ev;
    int got;
    do
        got = io_getevents(ctx, 1, 1, &ev, NULL);
    while (got == -EINTR);
    return got == 1 && (long)ev.res == (long)len;
}

/* One keep-alive request answered again, all in C: recv; if the bytes are exactly
   `want` (the request answered last time), send `head` with MSG_MORE and sendfile
   [start, stop) of `file`. The same three system calls the Python path makes, without
   the interpreter between them. Returns, with out[0] = bytes received, out[1] = head
   bytes sent, out[2] = file position reached, out[3] = errno:
   -errno  recv failed (-EAGAIN: nothing yet)     0  end of file: the client closed
    1  other bytes arrived: they are in buf          2  answered, every byte sent
    3  the socket filled up part way                 4  send or sendfile failed
    5  the file ended before `stop` (it shrank)                                       */
static int aiob_replay(int sock, char *buf, size_t cap, const char *want, size_t want_len,
                       const char *head, size_t head_len, int file, long long start,
                       long long stop, long long *out, struct aiob_tally *tally,
                       const long *cells, double began) {
    int same = replay_recv(sock, buf, cap, want, want_len, start, out);
    if (same != 2)
        return same;
    size_t sent = 0;
    while (sent < head_len) {
        ssize_t k = send(sock, head + sent, head_len - sent, MSG_MORE | MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            out[1] = (long long)sent;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 3;
            out[3] = errno;
            return 4;
        }
        sent += (size_t)k;
    }
    out[1] = (long long)sent;
    off_t pos = (off_t)start;
    while (pos < (off_t)stop) {
        ssize_t k = sendfile(sock, file, &pos, (size_t)(stop - pos));
        out[2] = (long long)pos;
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 3;
            out[3] = errno;
            return 4;
        }
        if (k == 0)
            return 5;
    }
    replay_tally(tally, cells, began, stop - start);
    return 2;
}

/* The same for a body read by AIO (a buffered read: io_submit does it inside the call,
   as the Python path's reap_now assumes): recv and compare; io_submit one read of
   [start, stop) into `data` through `ctx` (a context of the caller's, for this alone),
   its completion signalled on `efd` as every AIO read of the worker is; reap it; one
   sendmsg of head and data. Returns the outcomes of aiob_replay, with out[2] = body bytes
   sent, and 1 (the request is in buf, unanswered) when the read did not bring every
   byte: the Python path then reads again and answers as it would. */
static int aiob_replay_read(int sock, char *buf, size_t cap, const char *want, size_t want_len,
                            const char *head, size_t head_len, io_context_t ctx,
                            struct iocb *cb, int efd, char *data, int file, long long start,
                            long long stop, long long *out, struct aiob_tally *tally,
                            const long *cells, double began) {
    int same = replay_recv(sock, buf, cap, want, want_len, 0, out);
    if (same != 2)
        return same;
    size_t len = (size_t)(stop - start);
    if (len == 0)
        return 1;
    if (!replay_read_aio(ctx, cb, efd, file, data, len, start))
        return 1;
    size_t head_sent = 0, body_sent = 0;
    while (body_sent < len) {
        struct iovec iov[2];
        int cnt = 0;
        if (head_sent < head_len) {
            iov[cnt].iov_base = (void *)(head + head_sent);
            iov[cnt++].iov_len = head_len - head_sent;
        }
        iov[cnt].iov_base = data + body_sent;
        iov[cnt++].iov_len = len - body_sent;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = cnt;
        ssize_t k = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            out[1] = (long long)head_sent;
            out[2] = (long long)body_sent;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 3;
            out[3] = errno;
            return 4;
        }
        size_t took = (size_t)k;
        if (head_sent < head_len) {
            size_t h = head_len - head_sent < took ? head_len - head_sent : took;
            head_sent += h;
            took -= h;
        }
        body_sent += took;
    }
    out[1] = (long long)head_sent;
    out[2] = (long long)body_sent;
    replay_tally(tally, cells, began, (long long)len);
    return 2;
}

/* TLS: the few libssl functions a replay needs, taken from the OpenSSL the
   interpreter's ssl module uses (RTLD_NOLOAD: never a second OpenSSL in the process,
   whose SSL objects would not be ours to use). No OpenSSL headers at build time: the
   prototypes are OpenSSL's stable public ones. */
#define AIOB_SSL_ERROR_WANT_READ 2
#define AIOB_SSL_ERROR_WANT_WRITE 3
#define AIOB_SSL_ERROR_SYSCALL 5
#define AIOB_SSL_ERROR_ZERO_RETURN 6
static int (*tls_read)(void *, void *, int);
static int (*tls_write)(void *, const void *, int);
static int (*tls_get_error)(const void *, int);
static int (*tls_pending)(const void *);
static int (*tls_get_fd)(const void *);
static void *(*tls_get_ex_data)(const void *, int);
static void (*tls_clear_error)(void);

/* `path` is the ssl module's extension (_ssl.*.so), already loaded: the symbols are
   looked up through its handle, so among the libraries it was linked with, whatever
   else the process loaded. Returns OpenSSL_version_num() of what was bound, 0 if `path`
   is not loaded or a symbol is missing (an _ssl linked statically keeps them hidden). */
static unsigned long aiob_tls_bind(const char *path) {
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h == NULL)
        return 0;
    unsigned long (*version)(void) = (unsigned long (*)(void))dlsym(h, "OpenSSL_version_num");
    tls_read = (int (*)(void *, void *, int))dlsym(h, "SSL_read");
    tls_write = (int (*)(void *, const void *, int))dlsym(h, "SSL_write");
    tls_get_error = (int (*)(const void *, int))dlsym(h, "SSL_get_error");
    tls_pending = (int (*)(const void *))dlsym(h, "SSL_pending");
    tls_get_fd = (int (*)(const void *))dlsym(h, "SSL_get_fd");
    tls_get_ex_data = (void *(*)(const void *, int))dlsym(h, "SSL_get_ex_data");
    tls_clear_error = (void (*)(void))dlsym(h, "ERR_clear_error");
    if (!version || !tls_read || !tls_write || !tls_get_error || !tls_pending ||
        !tls_get_fd || !tls_get_ex_data || !tls_clear_error) {
        tls_read = NULL;
        return 0;
    }
    return version();
}

/* Is `ssl` the SSL object of the Python object `owner` on socket `fd`? (CPython's ssl
   module keeps its object in the SSL's app data, ex_data index 0.) */
static int aiob_tls_owns(void *ssl, int fd, void *owner) {
    return tls_read != NULL && ssl != NULL && tls_get_fd(ssl) == fd &&
           tls_get_ex_data(ssl, 0) == owner;
}

/* A failed SSL_read, as aiob_replay's recv: -EAGAIN when it only wants the socket
   again; 0 at the end (close_notify, or EOF); -errno of a failed read; -EPROTO for a TLS
   error (the Python path closes on every one). The error queue is left empty, as the
   ssl module leaves it. */
static int tls_read_failed(void *ssl, int n) {
    int err = errno;
    int e = tls_get_error(ssl, n);
    tls_clear_error();
    if (e == AIOB_SSL_ERROR_WANT_READ || e == AIOB_SSL_ERROR_WANT_WRITE)
        return -EAGAIN;
    if (e == AIOB_SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e == AIOB_SSL_ERROR_SYSCALL)
        return n < 0 && err ? -err : 0;
    return -EPROTO;
}

/* A repeated request over TLS: SSL_read (and what SSL decrypted beyond it, which epoll
   cannot see: up to `cap`, the first read taking at most `first`); if the bytes are
   `want`, the head is copied into `data` and the body read after it (pread, or one
   buffered io_submit through `ctx` when it is not NULL, signalled on `efd`), then one
   SSL_write of both: the bytes and calls the Python path makes. Outcomes of aiob_replay,
   out[2] = bytes in data; 3: SSL_write must be called again with those same bytes
   (OpenSSL's rule after WANT_WRITE); 1 also when an AIO read came back short. */
static int aiob_tls_replay(void *ssl, char *buf, size_t first, size_t cap, const char *want,
                           size_t want_len, const char *head, size_t head_len,
                           io_context_t ctx, struct iocb *cb, int efd, char *data,
                           size_t data_cap, int file, long long start, long long stop,
                           long long *out, struct aiob_tally *tally, const long *cells,
                           double began) {
    out[0] = out[1] = out[2] = out[3] = 0;
    tls_clear_error(); /* what SSL_get_error reads must be this call's (as nginx does) */
    errno = 0;
    int n = tls_read(ssl, buf, (int)(first < cap ? first : cap));
    if (n <= 0)
        return tls_read_failed(ssl, n);
    size_t got = (size_t)n;
    while (got < cap && tls_pending(ssl) > 0) {
        n = tls_read(ssl, buf + got, (int)(cap - got));
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    out[0] = (long long)got;
    size_t len = (size_t)(stop - start);
    if (got != want_len || memcmp(buf, want, want_len) != 0 || head_len + len > data_cap)
        return 1;
    memcpy(data, head, head_len);
    char *body = data + head_len;
    if (ctx == NULL) {
        size_t filled = 0;
        while (filled < len) {
            ssize_t k = pread(file, body + filled, len - filled, (off_t)(start + filled));
            if (k < 0) {
                if (errno == EINTR)
                    continue;
                out[3] = errno;
                return 4;
            }
            if (k == 0)
                return 5;
            filled += (size_t)k;
        }
    } else {
        if (!replay_read_aio(ctx, cb, efd, file, body, len, start))
            return 1;
    }
    size_t total = head_len + len;
    out[2] = (long long)total;
    tls_clear_error();
    errno = 0;
    int k = tls_write(ssl, data, (int)total);
    if (k > 0) {
        out[1] = (long long)total;
        replay_tally(tally, cells, began, (long long)len);
        return 2;
    }
    int err = errno;
    int e = tls_get_error(ssl, k);
    tls_clear_error();
    if (e == AIOB_SSL_ERROR_WANT_WRITE || e == AIOB_SSL_ERROR_WANT_READ)
        return 3;
    out[3] = e == AIOB_SSL_ERROR_SYSCALL && err ? err : EPROTO;
    return 4;
}

static int aiob_set_pdeathsig(int signo) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signo, 0UL, 0UL, 0UL) < 0 ? -errno : 0;
}

static int aiob_get_pdeathsig(void) {
    int signo = 0;
    return prctl(PR_GET_PDEATHSIG, (unsigned long)&signo, 0UL, 0UL, 0UL) < 0 ? -errno : signo;
}

static int aiob_set_comm(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0UL, 0UL, 0UL) < 0 ? -errno : 0;
}

/* out must hold 16 bytes (TASK_COMM_LEN); the kernel NUL-terminates it */
static int aiob_get_comm(char *out) {
    return prctl(PR_GET_NAME, (unsigned long)out, 0UL, 0UL, 0UL) < 0 ? -errno : 0;
}
"""
)

CDEF += "struct io_event { ...; };\n"

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("aiobind._native", SOURCE, libraries=["aio", "dl"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
