/*
 * The command line against a real node process: `quorumfs node` serves
 * until SIGTERM and exits 0; get/put/del print, resolve and exit as the
 * man page says (0 found, 1 absent, 2 errors); bad options are refused
 * before anything is sent. Every node process a test starts is stopped
 * by that test, also when an assertion fails (the fixture's teardown).
 */
#include "tests/testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_dir[64];
static char g_bin[512];
static char g_addr[32];
static pid_t g_node = -1;

static void setup(void) {
    make_tmpdir(g_dir, sizeof g_dir, "qfs-cli");
    const char *b = getenv("QFS_BUILD_DIR");
    cr_assert_not_null(b, "QFS_BUILD_DIR is set by ctest");
    snprintf(g_bin, sizeof g_bin, "%s/quorumfs", b);
}

static void stop_node(void) {
    if (g_node <= 0) return;
    kill(g_node, SIGTERM);
    waitpid(g_node, NULL, 0);
    g_node = -1;
}

static void teardown(void) {
    stop_node();
    rm_tree(g_dir);
}

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 60);

/* Run a shell command line; its exit status, and stdout into out. */
static int run(char *out, size_t cap, const char *fmt, ...) {
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = out ? fread(out, 1, cap - 1, p) : 0;
    if (out) out[n] = '\0';
    char sink[256];
    while (!out && fread(sink, 1, sizeof sink, p) > 0) {
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Start a node on a port derived from the pid (tests of other files may
 * run at the same time) and wait until it answers. */
static void start_node(void) {
    int port = 20000 + (int)(getpid() % 20000);
    snprintf(g_addr, sizeof g_addr, "127.0.0.1:%d", port);
    g_node = fork();
    cr_assert_geq(g_node, 0);
    if (g_node == 0) {
        char data[128];
        snprintf(data, sizeof data, "%s/node", g_dir);
        freopen("/dev/null", "w", stderr);
        execl(g_bin, "quorumfs", "node", "--data", data, "--listen", g_addr,
              "--name", "cli-node", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        if (run(NULL, 0, "%s get --node %s probe 2>/dev/null", g_bin, g_addr) ==
            1)
            return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("node did not come up on %s", g_addr);
}

Test(cli, put_get_del_and_siblings) {
    start_node();
    char out[4096];
    cr_assert_eq(
        run(out, sizeof out, "%s get --node %s devices/7/state", g_bin, g_addr),
        1);
    cr_assert_eq(
        run(NULL, 0, "%s put --node %s devices/7/state on", g_bin, g_addr), 0);
    cr_assert_eq(
        run(out, sizeof out, "%s get --node %s devices/7/state", g_bin, g_addr),
        0);
    cr_assert_str_eq(out, "on");
    /* A blind write is concurrent: two siblings, both printed. */
    cr_assert_eq(run(NULL, 0, "%s put --blind --node %s devices/7/state off",
                     g_bin, g_addr),
                 0);
    cr_assert_eq(
        run(out, sizeof out, "%s get --node %s devices/7/state", g_bin, g_addr),
        0);
    cr_assert_not_null(strstr(out, "2 siblings"), "%s", out);
    cr_assert_not_null(strstr(out, "\non\n"), "%s", out);
    cr_assert_not_null(strstr(out, "\noff\n"), "%s", out);
    /* A put reads first, so it resolves what it saw; stdin works. */
    cr_assert_eq(run(NULL, 0,
                     "printf 'dim' | %s put --sync --node %s devices/7/state",
                     g_bin, g_addr),
                 0);
    cr_assert_eq(
        run(out, sizeof out, "%s get --node %s devices/7/state", g_bin, g_addr),
        0);
    cr_assert_str_eq(out, "dim");
    cr_assert_eq(
        run(NULL, 0, "%s del --node %s devices/7/state", g_bin, g_addr), 0);
    cr_assert_eq(
        run(out, sizeof out, "%s get --node %s devices/7/state", g_bin, g_addr),
        1);
    cr_assert_eq(
        run(NULL, 0, "%s del --node %s devices/7/state", g_bin, g_addr), 1,
        "nothing left to delete");
    /* SIGTERM stops the node cleanly. */
    kill(g_node, SIGTERM);
    int st;
    cr_assert_eq(waitpid(g_node, &st, 0), g_node);
    g_node = -1;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "node exit status %d", st);
}

Test(cli, bad_arguments_exit_2_without_a_request) {
    /* No node is running: each of these must fail on its arguments, not
     * on the connection. */
    char out[1024];
    cr_assert_eq(run(out, sizeof out, "%s get -n 2 -r 3 k 2>&1", g_bin), 2);
    cr_assert_not_null(strstr(out, "1 <= R, W <= N"), "%s", out);
    cr_assert_eq(run(NULL, 0, "%s get -n 0 k 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s get 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s put a b c 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s get --bogus k 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s node 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s node --data %s --listen nowhere 2>/dev/null",
                     g_bin, g_dir),
                 2);
    /* R + W <= N is allowed with a warning. */
    cr_assert_eq(run(out, sizeof out,
                     "%s get --node 127.0.0.1:1 -n 3 -r 1 -w 1 k 2>&1", g_bin),
                 2);
    cr_assert_not_null(strstr(out, "warning: R + W <= N"), "%s", out);
    /* Nothing listening: a clear connection error, exit 2. */
    cr_assert_not_null(strstr(out, "cannot connect"), "%s", out);
}

/* ring, bucket and leave against a one-member cluster: who owns what, a
 * bucket's setting set and read back, the last member refused leave, and
 * bad arguments exit 2 before anything is sent. */
Test(cli, ring_bucket_and_leave) {
    start_node();
    char out[8192];
    cr_assert_eq(run(out, sizeof out, "%s ring --node %s", g_bin, g_addr), 0);
    cr_assert_not_null(strstr(out, "1 members, 8192 partitions"), "%s", out);
    cr_assert_not_null(strstr(out, "cli-node"), "%s", out);
    cr_assert_not_null(strstr(out, "100.00%"), "%s", out);
    cr_assert_eq(
        run(out, sizeof out, "%s ring --ranges --node %s", g_bin, g_addr), 0);
    cr_assert_not_null(strstr(out, "    0-8191 "), "%s", out);
    cr_assert_not_null(
        strstr(out, "0000000000000000-ffffffffffffffff  cli-node"), "%s", out);
    cr_assert_eq(
        run(out, sizeof out, "%s bucket --node %s sessions", g_bin, g_addr), 0);
    cr_assert_str_eq(out, "bucket sessions: siblings\n");
    cr_assert_eq(
        run(NULL, 0, "%s bucket --node %s sessions --lww", g_bin, g_addr), 0);
    cr_assert_eq(
        run(out, sizeof out, "%s bucket --node %s sessions", g_bin, g_addr), 0);
    cr_assert_str_eq(out, "bucket sessions: last writer wins\n");
    cr_assert_eq(run(out, sizeof out, "%s ring --node %s", g_bin, g_addr), 0);
    cr_assert_not_null(strstr(out, "bucket sessions: last writer wins"), "%s",
                       out);
    cr_assert_eq(run(out, sizeof out, "%s leave --node %s 2>&1", g_bin, g_addr),
                 2);
    cr_assert_not_null(strstr(out, "last member"), "%s", out);
    cr_assert_eq(
        run(NULL, 0, "%s bucket --node %s 'a/b' 2>/dev/null", g_bin, g_addr),
        2);
    cr_assert_eq(run(NULL, 0, "%s ring --bogus 2>/dev/null", g_bin), 2);
    cr_assert_eq(run(NULL, 0, "%s leave --remove 2>/dev/null", g_bin), 2);
}
