/*
 * Tests of the bootstrap: the TCP rendezvous with forked ranks on
 * 127.0.0.1 (allgathers checked byte by byte against an independently
 * computed pattern; refused joiners; missing ranks and roots time out in
 * bounded time), the OOB argument checks, and the single-process back end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/bootstrap_impl.h"
#include "core/bootstrap_tcp_io.h"

/* Exit code of a child: 0 when everything passed, else phase * 20 - status
 * so the parent can tell which step failed and with which status. */
enum { PHASE_CREATE = 1, PHASE_ALLGATHER = 2, PHASE_DATA = 3, PHASE_SLOW = 4 };
#define EXIT_CODE(phase, st) ((phase) * 20 + (-(int)(st)))

typedef struct {
    int rank, size, port;
    const char *secret;
    int timeout_ms;
    int rounds;       /* allgathers after create */
    size_t bytes[2];  /* bytes this rank contributes in each round */
} spec_t;

typedef struct {
    pid_t pid;
    int msg_fd; /* read end: the child's error message */
} child_t;

static uint8_t pattern(int rank, size_t i, int round)
{
    return (uint8_t)(rank * 131 + (int)(i % 251) * 7 + round * 29 + 1);
}

static void fill_cfg(mox__config_t *cfg, const spec_t *s, char *addr,
                     size_t addr_len)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(addr, addr_len, "127.0.0.1:%d", s->port);
    cfg->timeout_ms = s->timeout_ms;
    cfg->rank = s->rank;
    cfg->size = s->size;
    cfg->root_addr_str = addr;
    cfg->job_secret_str = s->secret;
    cfg->bootstrap = MOX_BOOT_TCP;
}

/* One allgather; 0 when every byte matches the expectation. */
static int one_round(mox__boot_t *boot, const spec_t *s, int round,
                     char *err, size_t errlen)
{
    size_t bytes = s->bytes[round];
    uint8_t *mine = malloc(bytes ? bytes : 1);
    uint8_t *all = malloc(bytes * (size_t)s->size + 1);
    for (size_t i = 0; i < bytes; i++)
        mine[i] = pattern(s->rank, i, round);
    mox_status_t st = mox__boot_allgather(boot, mine, all, bytes, err, errlen);
    int code = st == MOX_OK ? 0 : EXIT_CODE(PHASE_ALLGATHER, st);
    for (int r = 0; code == 0 && r < s->size; r++)
        for (size_t i = 0; i < bytes; i++)
            if (all[(size_t)r * bytes + i] != pattern(r, i, round)) {
                snprintf(err, errlen, "round %d: byte %zu of rank %d wrong",
                         round, i, r);
                code = EXIT_CODE(PHASE_DATA, 0);
                break;
            }
    free(mine);
    free(all);
    return code;
}

static int run_rank(const spec_t *s, char *err, size_t errlen)
{
    mox__config_t cfg;
    char addr[64];
    fill_cfg(&cfg, s, addr, sizeof(addr));
    mox__boot_t *boot = NULL;
    uint64_t start = btcp_now_ms();
    mox_status_t st = mox__boot_create(NULL, &cfg, &boot, err, errlen);
    if (btcp_now_ms() - start > (uint64_t)s->timeout_ms + 1500)
        return EXIT_CODE(PHASE_SLOW, 0);
    if (st != MOX_OK)
        return EXIT_CODE(PHASE_CREATE, st);
    int code = 0;
    if (mox__boot_rank(boot) != s->rank || mox__boot_size(boot) != s->size ||
        strcmp(mox__boot_kind(boot), "tcp") != 0) {
        snprintf(err, errlen, "rank/size/kind wrong");
        code = EXIT_CODE(PHASE_DATA, 0);
    }
    for (int round = 0; code == 0 && round < s->rounds; round++)
        code = one_round(boot, s, round, err, errlen);
    mox__boot_destroy(boot);
    return code;
}

static child_t spawn(const spec_t *s)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(30); /* no test may hang the suite */
        close(p[0]);
        char err[1024] = "";
        int code = run_rank(s, err, sizeof(err));
        ssize_t ignored = write(p[1], err, strlen(err));
        (void)ignored;
        _exit(code);
    }
    close(p[1]);
    return (child_t){pid, p[0]};
}

/* Exit code (or 200 + signal) and the child's message. */
static int reap(child_t c, char *msg, size_t len)
{
    int status = 0;
    assert_int_equal(waitpid(c.pid, &status, 0), c.pid);
    ssize_t n = read(c.msg_fd, msg, len - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(c.msg_fd);
    if (WIFSIGNALED(status))
        return 200 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static spec_t good_spec(int rank, int size, int port)
{
    return (spec_t){.rank = rank, .size = size, .port = port,
                    .secret = "s3cret", .timeout_ms = 10000, .rounds = 2,
                    .bytes = {1000, 100000}};
}

/* Every rank of `size`, root last so joiners exercise the retry. */
static void run_world(int size)
{
    int port = free_port();
    child_t kids[16];
    for (int r = size - 1; r >= 0; r--) {
        spec_t s = good_spec(r, size, port);
        kids[r] = spawn(&s);
        if (r == 1)
            nap_ms(100);
    }
    for (int r = 0; r < size; r++) {
        char msg[1024];
        int code = reap(kids[r], msg, sizeof(msg));
        if (code != 0)
            print_error("rank %d exit %d: %s\n", r, code, msg);
        assert_int_equal(code, 0);
    }
}

static void test_tcp_allgather_1_rank(void **state)
{
    (void)state;
    run_world(1);
}

static void test_tcp_allgather_3_ranks(void **state)
{
    (void)state;
    run_world(3);
}

static void test_tcp_allgather_8_ranks(void **state)
{
    (void)state;
    run_world(8);
}

static void test_tcp_bad_joiners_refused_good_ones_succeed(void **state)
{
    (void)state;
    int port = free_port();
    spec_t root = good_spec(0, 3, port);
    child_t k0 = spawn(&root);
    nap_ms(100);
    spec_t wrong_secret = good_spec(2, 3, port);
    wrong_secret.secret = "guess";
    wrong_secret.timeout_ms = 3000;
    spec_t wrong_size = good_spec(1, 4, port);
    wrong_size.timeout_ms = 3000;
    child_t bad1 = spawn(&wrong_secret), bad2 = spawn(&wrong_size);
    char msg[1024];
    assert_int_equal(reap(bad1, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_CREATE, MOX_ERR_BOOTSTRAP));
    assert_non_null(strstr(msg, "wrong job secret"));
    assert_int_equal(reap(bad2, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_CREATE, MOX_ERR_BOOTSTRAP));
    assert_non_null(strstr(msg, "size mismatch"));
    spec_t r1 = good_spec(1, 3, port), r2 = good_spec(2, 3, port);
    child_t k1 = spawn(&r1), k2 = spawn(&r2);
    assert_int_equal(reap(k0, msg, sizeof(msg)), 0);
    assert_int_equal(reap(k1, msg, sizeof(msg)), 0);
    assert_int_equal(reap(k2, msg, sizeof(msg)), 0);
}

static void test_tcp_missing_rank_fails_root_in_time(void **state)
{
    (void)state;
    int port = free_port();
    spec_t root = good_spec(0, 3, port), r1 = good_spec(1, 3, port);
    root.timeout_ms = r1.timeout_ms = 1000;
    root.rounds = r1.rounds = 0;
    child_t k0 = spawn(&root), k1 = spawn(&r1);
    char msg[1024];
    /* PHASE_SLOW would mean it overran the timeout by more than 1.5 s. */
    assert_int_equal(reap(k0, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_CREATE, MOX_ERR_BOOTSTRAP));
    assert_non_null(strstr(msg, "1 of 3 ranks"));
    assert_non_null(strstr(msg, "missing: 2"));
    assert_int_equal(reap(k1, msg, sizeof(msg)), 0);
}

static void test_tcp_absent_root_fails_joiner_in_time(void **state)
{
    (void)state;
    int port = free_port();
    spec_t r1 = good_spec(1, 2, port);
    r1.timeout_ms = 800;
    child_t k1 = spawn(&r1);
    char msg[1024], where[64];
    assert_int_equal(reap(k1, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_CREATE, MOX_ERR_BOOTSTRAP));
    snprintf(where, sizeof(where), "127.0.0.1:%d", port);
    assert_non_null(strstr(msg, where));
    assert_non_null(strstr(msg, "800 ms"));
}

static void test_tcp_length_mismatch_is_protocol_error(void **state)
{
    (void)state;
    int port = free_port();
    spec_t root = good_spec(0, 2, port), r1 = good_spec(1, 2, port);
    root.timeout_ms = r1.timeout_ms = 3000;
    root.rounds = r1.rounds = 1;
    root.bytes[0] = 16;
    r1.bytes[0] = 8; /* disagrees with the root */
    child_t k0 = spawn(&root), k1 = spawn(&r1);
    char msg[1024];
    assert_int_equal(reap(k0, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_ALLGATHER, MOX_ERR_PROTOCOL));
    assert_non_null(strstr(msg, "rank 1"));
    /* The root gave up and exited: the joiner sees it leave, not a hang. */
    assert_int_equal(reap(k1, msg, sizeof(msg)),
                     EXIT_CODE(PHASE_ALLGATHER, MOX_ERR_PEER));
    assert_non_null(strstr(msg, "rank 0"));
}

/* ---- OOB and single --------------------------------------------------- */

static int copy_allgather(void *ctx, const void *sendbuf, void *recvbuf,
                          size_t bytes)
{
    (*(int *)ctx)++;
    memcpy(recvbuf, sendbuf, bytes);
    return 0;
}

static void test_oob_validates_rank_and_size(void **state)
{
    (void)state;
    mox__config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.timeout_ms = 1000;
    int calls = 0;
    mox_comm_params_t p = {.struct_size = sizeof(p),
                           .oob_allgather = copy_allgather,
                           .oob_ctx = &calls};
    mox__boot_t *boot = NULL;
    char err[256];
    int bad[][2] = {{0, 0}, {-1, 2}, {2, 2}, {0, -5}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p.oob_rank = bad[i][0];
        p.oob_size = bad[i][1];
        assert_int_equal(mox__boot_create(&p, &cfg, &boot, err, sizeof(err)),
                         MOX_ERR_INVALID_ARG);
        assert_null(boot);
    }
    p.oob_rank = 0;
    p.oob_size = 1;
    assert_int_equal(mox__boot_create(&p, &cfg, &boot, err, sizeof(err)),
                     MOX_OK);
    assert_string_equal(mox__boot_kind(boot), "oob");
    uint32_t mine = 0xfeedbeef, all = 0;
    assert_int_equal(mox__boot_allgather(boot, &mine, &all, 4, err,
                                         sizeof(err)), MOX_OK);
    assert_int_equal(all, 0xfeedbeef);
    assert_int_equal(calls, 1);
    mox__boot_destroy(boot);
}

static void test_single_is_rank_0_of_1(void **state)
{
    (void)state;
    mox__config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.timeout_ms = 1000;
    cfg.bootstrap = MOX_BOOT_SINGLE;
    mox__boot_t *boot = NULL;
    char err[256];
    assert_int_equal(mox__boot_create(NULL, &cfg, &boot, err, sizeof(err)),
                     MOX_OK);
    assert_int_equal(mox__boot_rank(boot), 0);
    assert_int_equal(mox__boot_size(boot), 1);
    char all[6] = "";
    assert_int_equal(mox__boot_allgather(boot, "hello", all, 6, err,
                                         sizeof(err)), MOX_OK);
    assert_string_equal(all, "hello");
    assert_int_equal(mox__boot_barrier(boot, err, sizeof(err)), MOX_OK);
    assert_int_equal(mox__boot_allgather(boot, NULL, all, 6, err,
                                         sizeof(err)), MOX_ERR_INVALID_ARG);
    mox__boot_destroy(boot);
    mox__boot_destroy(NULL);
}

static void test_sha256_known_vectors(void **state)
{
    (void)state;
    static const struct { const char *in, *hex; } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc",
         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t d[BTCP_SHA256_BYTES];
        char hex[2 * BTCP_SHA256_BYTES + 1];
        btcp_sha256(v[i].in, strlen(v[i].in), d);
        for (int j = 0; j < BTCP_SHA256_BYTES; j++)
            snprintf(hex + 2 * j, 3, "%02x", d[j]);
        assert_string_equal(hex, v[i].hex);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_vectors),
        cmocka_unit_test(test_single_is_rank_0_of_1),
        cmocka_unit_test(test_oob_validates_rank_and_size),
        cmocka_unit_test(test_tcp_allgather_1_rank),
        cmocka_unit_test(test_tcp_allgather_3_ranks),
        cmocka_unit_test(test_tcp_allgather_8_ranks),
        cmocka_unit_test(test_tcp_bad_joiners_refused_good_ones_succeed),
        cmocka_unit_test(test_tcp_missing_rank_fails_root_in_time),
        cmocka_unit_test(test_tcp_absent_root_fails_joiner_in_time),
        cmocka_unit_test(test_tcp_length_mismatch_is_protocol_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
