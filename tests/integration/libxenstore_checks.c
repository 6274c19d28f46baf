/*
 * A libxenstore client (Debian's libxen-dev, Xen 4.17) for tests/integration/test_libxenstore.py.
 * It reaches xenstored the way every Xen tool does: xs_open() connects to XENSTORED_PATH
 * (tools/xenstore/xs_lib.c xs_daemon_path). Each check prints one line, "ok <name>"; the first
 * failure prints "FAIL <name>: <why>" and exits 1. The transaction checks follow Xen's own
 * tools/tests/xenstore/test-xenstore.c ("ta rmw", "ta err").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

static void fail(const char *check, const char *why)
{
    int err = errno;

    printf("FAIL %s: %s (errno %d: %s)\n", check, why, err, strerror(err));
    exit(1);
}

static void ok(const char *check)
{
    printf("ok %s\n", check);
    fflush(stdout);
}

/* The node's value must be exactly `want`. */
static void expect_value(struct xs_handle *h, xs_transaction_t t, const char *path,
                         const char *want, const char *check)
{
    unsigned int len;
    char *value = xs_read(h, t, path, &len);

    if (!value)
        fail(check, path);
    if (len != strlen(want) || memcmp(value, want, len)) {
        printf("FAIL %s: %s is \"%.*s\", not \"%s\"\n", check, path, (int)len, value, want);
        exit(1);
    }
    free(value);
}

/* The node must be missing (ENOENT). */
static void expect_enoent(struct xs_handle *h, xs_transaction_t t, const char *path,
                          const char *check)
{
    unsigned int len;
    char *value = xs_read(h, t, path, &len);

    if (value) {
        free(value);
        errno = 0;
        fail(check, "the node exists");
    }
    if (errno != ENOENT)
        fail(check, "not ENOENT");
}

static void write_or_fail(struct xs_handle *h, xs_transaction_t t, const char *path,
                          const char *value, const char *check)
{
    if (!xs_write(h, t, path, value, strlen(value)))
        fail(check, path);
}

int main(void)
{
    struct xs_handle *h, *other;
    xs_transaction_t t;
    unsigned int num;
    char **dir;

    h = xs_open(0);
    other = xs_open(0);
    if (!h || !other)
        fail("open", "xs_open");
    ok("open");

    write_or_fail(h, XBT_NULL, "/lxs/a", "hello", "write");
    ok("write");

    expect_value(h, XBT_NULL, "/lxs/a", "hello", "read");
    expect_value(other, XBT_NULL, "/lxs/a", "hello", "read");
    ok("read");

    write_or_fail(h, XBT_NULL, "lxs-rel", "1", "relative write");
    expect_value(other, XBT_NULL, "/local/domain/0/lxs-rel", "1", "relative write");
    ok("relative write");

    write_or_fail(h, XBT_NULL, "/lxs/b", "", "directory");
    if (!xs_mkdir(h, XBT_NULL, "/lxs/c"))
        fail("directory", "xs_mkdir");
    dir = xs_directory(h, XBT_NULL, "/lxs", &num);
    if (!dir)
        fail("directory", "xs_directory");
    if (num != 3 || strcmp(dir[0], "a") || strcmp(dir[1], "b") || strcmp(dir[2], "c")) {
        errno = 0;
        fail("directory", "not [a, b, c]");
    }
    free(dir);
    ok("directory");

    if (!xs_rm(h, XBT_NULL, "/lxs/b"))
        fail("rm", "xs_rm");
    expect_enoent(h, XBT_NULL, "/lxs/b", "rm");
    dir = xs_directory(h, XBT_NULL, "/lxs", &num);
    if (!dir || num != 2)
        fail("rm", "/lxs should list 2 children");
    free(dir);
    ok("rm");

    /* "ta rmw": read-modify-write; nothing shows outside before the commit. */
    t = xs_transaction_start(h);
    if (t == XBT_NULL)
        fail("transaction commit", "xs_transaction_start");
    expect_value(h, t, "/lxs/a", "hello", "transaction commit");
    write_or_fail(h, t, "/lxs/a", "tx", "transaction commit");
    write_or_fail(h, t, "/lxs/t1", "x", "transaction commit");
    expect_value(h, t, "/lxs/a", "tx", "transaction commit");
    expect_value(other, XBT_NULL, "/lxs/a", "hello", "transaction commit");
    expect_enoent(other, XBT_NULL, "/lxs/t1", "transaction commit");
    if (!xs_transaction_end(h, t, false))
        fail("transaction commit", "xs_transaction_end");
    expect_value(other, XBT_NULL, "/lxs/a", "tx", "transaction commit");
    expect_value(other, XBT_NULL, "/lxs/t1", "x", "transaction commit");
    ok("transaction commit");

    t = xs_transaction_start(h);
    if (t == XBT_NULL)
        fail("transaction abort", "xs_transaction_start");
    write_or_fail(h, t, "/lxs/t2", "x", "transaction abort");
    if (!xs_transaction_end(h, t, true))
        fail("transaction abort", "xs_transaction_end");
    expect_enoent(other, XBT_NULL, "/lxs/t2", "transaction abort");
    ok("transaction abort");

    /* "ta err": another connection writes a node the transaction read. */
    t = xs_transaction_start(h);
    if (t == XBT_NULL)
        fail("ta err second read", "xs_transaction_start");
    expect_value(h, t, "/lxs/a", "tx", "ta err second read");
    write_or_fail(other, XBT_NULL, "/lxs/a", "other", "ta err second read");
    expect_value(h, t, "/lxs/a", "tx", "ta err second read");
    ok("ta err second read");

    write_or_fail(h, t, "/lxs/a", "mine", "transaction conflict");
    expect_value(h, t, "/lxs/a", "mine", "transaction conflict");
    errno = 0;
    if (xs_transaction_end(h, t, false)) {
        errno = 0;
        fail("transaction conflict", "the commit succeeded");
    }
    if (errno != EAGAIN)
        fail("transaction conflict", "not EAGAIN");
    expect_value(other, XBT_NULL, "/lxs/a", "other", "transaction conflict");
    ok("transaction conflict EAGAIN");

    xs_close(other);
    xs_close(h);
    return 0;
}
