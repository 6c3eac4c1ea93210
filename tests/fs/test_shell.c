/*
 * Shell tools on a real mount of an embedded store: what scripts and
 * operators do with a directory. Each test mounts a fresh store and
 * unmounts it at the end, pass or fail.
 */
#include "tests/fs/fsutil.h"

static qmount g_m;

static void setup(void) {
    qmount_dirs(&g_m, "qfs-sh");
    qmount_start(&g_m, NULL, NULL);
}

static void teardown(void) {
    qmount_cleanup(&g_m);
}

TestSuite(shell, .init = setup, .fini = teardown, .timeout = 300);

#define SH_OK(...) cr_assert_eq(sh(g_m.dir, __VA_ARGS__), 0, __VA_ARGS__)

Test(shell, echo_cat_append) {
    SH_OK("echo hello > a && test \"$(cat a)\" = hello");
    SH_OK(
        "echo world >> a && test \"$(cat a)\" = \"$(printf 'hello\\nworld')\"");
    SH_OK("test $(stat -c %%s a) = 12");
    SH_OK("printf '' > a && test ! -s a");
}

Test(shell, mkdir_ls_find_mv_rm) {
    SH_OK("mkdir -p d/e/f && touch d/x d/e/y d/e/f/z");
    SH_OK("test \"$(find d | sort | tr '\\n' ' ')\" = "
          "'d d/e d/e/f d/e/f/z d/e/y d/x '");
    SH_OK("ls -l d | grep -q '^d.* e$'");
    SH_OK("mv d/x d/e/x2 && test -e d/e/x2 && test ! -e d/x");
    SH_OK("mv d/e d/g && test -e d/g/f/z && test ! -e d/e");
    SH_OK("rm -r d && test ! -e d && test -z \"$(ls -A)\"");
}

Test(shell, cp_tree_and_back_with_equal_checksums) {
    SH_OK("cp -r /usr/include/linux ./tree");
    SH_OK("b=/tmp/qfs-sh-back-$$ && cp -r ./tree $b && "
          "s() { (cd \"$1\" && find . -type f | sort | xargs sha1sum | "
          "sha1sum); } && "
          "x=$(s /usr/include/linux) && y=$(s tree) && z=$(s $b) && "
          "rm -rf $b && test \"$x\" = \"$y\" && test \"$x\" = \"$z\"");
}

Test(shell, tar_round_trip) {
    SH_OK("tar -C /usr/include -cf - linux/netfilter | tar -xf -");
    SH_OK("diff -r /usr/include/linux/netfilter linux/netfilter");
    SH_OK("t=/tmp/qfs-sh-$$.tar && tar -cf $t linux && mkdir x && "
          "tar -C x -xf $t && rm $t && diff -r linux x/linux");
}

Test(shell, sed_in_place_truncate_dd) {
    SH_OK("printf 'one\\ntwo\\nthree\\n' > f && sed -i s/two/TWO/ f && "
          "test \"$(sed -n 2p f)\" = TWO && test $(wc -l < f) = 3");
    SH_OK("truncate -s 100000 f && test $(stat -c %%s f) = 100000 && "
          "test \"$(head -c 3 f)\" = one");
    SH_OK("truncate -s 2 f && test \"$(cat f)\" = on");
    SH_OK("r=/tmp/qfs-sh-r-$$ && "
          "dd if=/dev/urandom of=$r bs=4096 count=3 2>/dev/null && "
          "dd if=$r of=g bs=4096 seek=1000 conv=notrunc 2>/dev/null && "
          "test $(stat -c %%s g) = $((1003*4096)) && "
          "cmp -n $((1000*4096)) g /dev/zero && "
          "cmp -i $((1000*4096)):0 g $r && rm $r");
}

Test(shell, big_file_byte_identical) {
    SH_OK("r=/tmp/qfs-sh-big-$$ && head -c 200M /dev/urandom > $r && "
          "cp $r big && cmp big $r; s=$?; rm -f $r; exit $s");
}

Test(shell, files_survive_remount) {
    SH_OK("mkdir keep && echo kept > keep/a && "
          "head -c 300000 /dev/urandom > keep/b && "
          "sha1sum keep/b > /tmp/qfs-sh-sum-%d",
          (int)getpid());
    cr_assert_eq(qmount_stop(&g_m), 0);
    qmount_start(&g_m, NULL, NULL);
    SH_OK("test \"$(cat keep/a)\" = kept && "
          "sha1sum -c --quiet /tmp/qfs-sh-sum-%d && rm /tmp/qfs-sh-sum-%d",
          (int)getpid(), (int)getpid());
}

Test(shell, closed_files_survive_sigkill_of_the_mount) {
    SH_OK("for i in $(seq 1 50); do echo file$i > f$i; done");
    SH_OK("head -c 5000000 /dev/urandom > big && "
          "sha1sum big > /tmp/qfs-sh-k-%d",
          (int)getpid());
    qmount_kill(&g_m);
    qmount_start(&g_m, NULL, NULL);
    SH_OK("for i in $(seq 1 50); do "
          "test \"$(cat f$i)\" = file$i || exit 1; done");
    SH_OK("sha1sum -c --quiet /tmp/qfs-sh-k-%d && rm /tmp/qfs-sh-k-%d",
          (int)getpid(), (int)getpid());
}

Test(shell, sigterm_writes_back_and_unmounts) {
    /* A file still open when the signal comes: its data goes out at the
     * stop, the mount point is released, the process exits 0. */
    char path[256];
    snprintf(path, sizeof path, "%s/open", g_m.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("written before the signal\n", f);
    fflush(f);
    kill(g_m.pid, SIGTERM);
    fclose(f); /* may fail: the mount is going away */
    int st = -1;
    for (int i = 0; i < 500; i++) {
        if (waitpid(g_m.pid, &st, WNOHANG) == g_m.pid) break;
        sleep_ms(20);
    }
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    g_m.pid = 0;
    cr_assert(!is_fuse_mount(g_m.dir), "still mounted after SIGTERM");
    qmount_start(&g_m, NULL, NULL);
    SH_OK("test \"$(cat open)\" = 'written before the signal'");
}
