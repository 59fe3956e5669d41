/*
 * mox-conformance: run a matrix of collectives against any library that
 * exports the mox plugin ABI, and say which cases pass.
 *
 * With -n (or when not started by a launcher) it starts itself N times
 * under tools/mox-run and merges what the ranks report: a case passes when
 * every rank's own check passed. Every rank regenerates its inputs and
 * expected results from the seed, so no rank trusts another, and the
 * verdicts travel over mox-run's output pipes, never through the plugin
 * under test. Started by another launcher (mpirun, srun, mox-run) without
 * -n, each rank runs the matrix and reports for itself.
 */
#include "conformance/conf.h"
#include "mox_loader.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <regex.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_CASES 512
#define TAG "MOXCONF "

#ifndef MOX_RUN_FALLBACK
#define MOX_RUN_FALLBACK "mox-run"
#endif

typedef struct {
    const char *plugin, *filter, *mox_run, *nodes, *node_sizes;
    int nranks, timeout, list, rank_mode, verbose;
    uint64_t seed;
} opts_t;

static void usage(FILE *f)
{
    fprintf(f,
"usage: mox-conformance [--plugin PATH|NAME] [-n RANKS] [--nodes K |\n"
"         --node-sizes A,B,..] [--filter REGEX] [--seed S] [--list]\n"
"         [--timeout SEC] [--mox-run PATH] [-v]\n"
"\n"
"Runs collectives x types x sizes x layouts x edge cases against a library\n"
"that exports the mox plugin ABI (include/mox/plugin_v1.h) and prints one\n"
"line per case (pass, FAIL with the first failing rank's reason, or skip\n"
"with the capability that declared it unsupported), then\n"
"\"N passed, N failed, N skipped\". Exits 1 when any case failed.\n"
"\n"
"  --plugin P      library to test: a path, a bare name (libmox-NAME.so,\n"
"                  then NAME), default $MOX_PLUGIN or libmox.so\n"
"  -n RANKS        ranks to start through mox-run (default 2)\n"
"  --nodes K       emulated nodes (mox-run --nodes); --node-sizes A,B,..\n"
"  --filter REGEX  run only cases whose name matches (POSIX extended)\n"
"  --seed S        data seed (default 1); every rank derives all data from it\n"
"  --list          print the case names and exit\n"
"  --timeout SEC   kill the run after SEC seconds (default 300)\n"
"  --mox-run PATH  launcher (default $MOX_RUN, mox-run beside this program,\n"
"                  then the source tree's)\n"
"  -v              also print every rank's verdict lines\n");
}

static int parse(int argc, char **argv, opts_t *o)
{
    static const struct option lo[] = {
        {"plugin", 1, 0, 'p'}, {"nodes", 1, 0, 'N'},
        {"node-sizes", 1, 0, 'S'}, {"filter", 1, 0, 'f'},
        {"seed", 1, 0, 's'}, {"list", 0, 0, 'l'}, {"timeout", 1, 0, 't'},
        {"mox-run", 1, 0, 'm'}, {"rank", 0, 0, 'R'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    *o = (opts_t){.seed = 1, .timeout = 300};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "n:vh", lo, NULL)) != -1) {
        switch (c) {
        case 'p': o->plugin = optarg; break;
        case 'n':
            o->nranks = (int)strtol(optarg, &end, 10);
            if (*end || o->nranks < 1) {
                fprintf(stderr, "mox-conformance: -n %s: expected a rank "
                        "count >= 1\n", optarg);
                return -1;
            }
            break;
        case 'N': o->nodes = optarg; break;
        case 'S': o->node_sizes = optarg; break;
        case 'f': o->filter = optarg; break;
        case 's':
            errno = 0;
            o->seed = strtoull(optarg, &end, 0);
            if (*end || errno) {
                fprintf(stderr, "mox-conformance: --seed %s: not a number\n",
                        optarg);
                return -1;
            }
            break;
        case 'l': o->list = 1; break;
        case 't': o->timeout = atoi(optarg); break;
        case 'm': o->mox_run = optarg; break;
        case 'R': o->rank_mode = 1; break;
        case 'v': o->verbose = 1; break;
        case 'h': usage(stdout); exit(0);
        default: return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mox-conformance: unexpected argument '%s'\n",
                argv[optind]);
        return -1;
    }
    return 0;
}

/* ---- helpers for the cases ----------------------------------------- */

static conf_result_t vset(conf_ctx_t *x, conf_result_t r, const char *fmt,
                          va_list ap)
{
    vsnprintf(x->detail, sizeof x->detail, fmt, ap);
    for (char *p = x->detail; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return r;
}

conf_result_t conf_fail(conf_ctx_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset(x, CASE_FAIL, fmt, ap);
    va_end(ap);
    return CASE_FAIL;
}

conf_result_t conf_skip(conf_ctx_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vset(x, CASE_SKIP, fmt, ap);
    va_end(ap);
    return CASE_SKIP;
}

int conf_need(conf_ctx_t *x, size_t offset, const char *entry,
              uint64_t coll_bit, const char *coll_name)
{
    const mox_plugin_v1_t *t = x->t;
    if (t->struct_size < offset + sizeof(void (*)(void))) {
        conf_skip(x, "table ends before %s (struct_size %zu)", entry,
                  t->struct_size);
        return 0;
    }
    void (*fn)(void);
    memcpy(&fn, (const char *)t + offset, sizeof fn);
    if (!fn) {
        conf_skip(x, "entry %s is NULL", entry);
        return 0;
    }
    if (coll_bit && !(x->caps.collectives & coll_bit)) {
        conf_skip(x, "caps.collectives lacks %s", coll_name);
        return 0;
    }
    return 1;
}

int conf_finish(conf_ctx_t *x, int st, mox_v1_req_t req, int progress)
{
    if (st != MOX_V1_OK)
        return st;
    if (progress == PROG_TEST) {
        int done = 0;
        for (unsigned polls = 0; st == MOX_V1_OK && !done; polls++) {
            st = x->t->req_test(req, &done);
            if (!done && polls % 64 == 63)
                sched_yield();
        }
    } else {
        st = x->t->req_wait(req);
    }
    x->t->req_free(req);
    return st;
}

const char *conf_status(conf_ctx_t *x, int st)
{
    static char buf[96];
    snprintf(buf, sizeof buf, "status %d (%s)", st,
             x->t->strerror ? x->t->strerror(st) : "?");
    return buf;
}

void conf_name(conf_case_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->name, sizeof c->name, fmt, ap);
    va_end(ap);
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the name */
    for (const char *p = c->name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    c->key = h;
}

/* ---- the matrix ---------------------------------------------------- */

static conf_case_t cases[MAX_CASES];

static int build_cases(const char *filter, int *ncases)
{
    int n = 0;
    n += conf_basic_cases(cases + n, MAX_CASES - n);
    n += conf_a2a_cases(cases + n, MAX_CASES - n);
    n += conf_moe_cases(cases + n, MAX_CASES - n);
    n += conf_rsag_cases(cases + n, MAX_CASES - n);
    if (filter) {
        regex_t re;
        int rc = regcomp(&re, filter, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char msg[256];
            regerror(rc, &re, msg, sizeof msg);
            fprintf(stderr, "mox-conformance: --filter '%s': %s\n", filter,
                    msg);
            return -1;
        }
        int kept = 0;
        for (int i = 0; i < n; i++)
            if (regexec(&re, cases[i].name, 0, NULL, 0) == 0)
                cases[kept++] = cases[i];
        regfree(&re);
        n = kept;
    }
    *ncases = n;
    return 0;
}

/* ---- rank mode: run every case, print one verdict line each -------- */

static void host_log(void *ctx, int level, const char *line)
{
    (void)ctx;
    if (level <= 1)
        fprintf(stderr, "plugin: %s\n", line);
}

static int run_rank(const opts_t *o, int ncases)
{
    mox_loader_t ld;
    char err[2048];
    mox_loader_status_t ls = mox_loader_open(&ld, o->plugin, err, sizeof err);
    if (ls == MOX_LOADER_DISABLED) {
        fprintf(stderr, "mox-conformance: MOX_PLUGIN=none: nothing to test\n");
        return 2;
    }
    if (ls != MOX_LOADER_OK) {
        fprintf(stderr, "mox-conformance: %s\n", err);
        return 2;
    }
    conf_ctx_t x = {.t = &ld.v1, .seed = o->seed};
    mox_v1_host_t host = {sizeof host, MOX_PLUGIN_ABI_V1, host_log, NULL};
    int st = x.t->init ? x.t->init(&host) : MOX_V1_OK;
    if (st == MOX_V1_OK)
        st = x.t->comm_create(NULL, &x.comm, err, sizeof err);
    if (st != MOX_V1_OK) {
        fprintf(stderr, "mox-conformance: %s (%s): init/comm_create: status "
                "%d: %s\n", ld.path, ld.v1.name, st, err);
        mox_loader_close(&ld);
        return 2;
    }
    x.rank = x.t->comm_rank(x.comm);
    x.size = x.t->comm_size(x.comm);
    x.caps.struct_size = sizeof x.caps;
    if (!x.t->get_caps || x.t->get_caps(&x.caps) != MOX_V1_OK)
        memset(&x.caps, 0, sizeof x.caps);
    if (x.rank == 0)
        printf(TAG "plugin %s %s from %s (%s, struct_size %zu) ranks %d\n",
               ld.v1.name ? ld.v1.name : "?",
               ld.v1.version ? ld.v1.version : "?", ld.path, ld.symbol,
               ld.plugin_struct_size, x.size);
    int failed = 0;
    static const char *word[] = {"pass", "fail", "skip"};
    for (int i = 0; i < ncases; i++) {
        x.detail[0] = '\0';
        conf_result_t r = cases[i].run(&x, &cases[i]);
        failed += r == CASE_FAIL;
        printf(TAG "%s %s %s\n", word[r], cases[i].name, x.detail);
        fflush(stdout);
    }
    printf(TAG "done %d\n", ncases);
    fflush(stdout);
    x.t->comm_destroy(x.comm);
    if (x.t->finalize)
        x.t->finalize();
    mox_loader_close(&ld);
    /* Under our own launcher the parent judges from the verdict lines; a
     * non-zero exit would make mox-run stop the slower ranks early. */
    return failed && !o->rank_mode ? 1 : 0;
}

/* ---- launcher mode: start the ranks, merge their verdicts ----------- */

typedef struct {
    int verdict[3]; /* ranks that said pass / fail / skip */
    int fail_rank;
    char detail[768]; /* first failing rank's reason, or the skip reason */
} merged_t;

static merged_t merged[MAX_CASES];

static const char *find_mox_run(const opts_t *o, char *buf, size_t len)
{
    if (o->mox_run)
        return o->mox_run;
    if (getenv("MOX_RUN"))
        return getenv("MOX_RUN");
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(buf, len, "%s/mox-run", self);
            if (access(buf, X_OK) == 0)
                return buf;
        }
    }
    return MOX_RUN_FALLBACK;
}

static int case_index(const char *name, int ncases)
{
    for (int i = 0; i < ncases; i++)
        if (strcmp(cases[i].name, name) == 0)
            return i;
    return -1;
}

/* One output line of mox-run: "[R] MOXCONF pass NAME DETAIL". */
static void take_line(const opts_t *o, char *line, int ncases, int *done)
{
    int rank;
    char *p;
    if (sscanf(line, "[%d]", &rank) != 1 || !(p = strstr(line, "] " TAG))) {
        fputs(line, stdout); /* a rank's own message: keep it visible */
        return;
    }
    p += 2 + strlen(TAG);
    line[strcspn(line, "\n")] = '\0';
    if (strncmp(p, "plugin ", 7) == 0) {
        printf("mox-conformance: %s\n", p);
        return;
    }
    if (strncmp(p, "done ", 5) == 0) {
        (*done)++;
        return;
    }
    if (o->verbose)
        printf("%s\n", line);
    char verdict[8] = "", name[128] = "";
    int off = 0;
    if (sscanf(p, "%7s %127s %n", verdict, name, &off) < 2)
        return;
    int i = case_index(name, ncases), v = !strcmp(verdict, "pass") ? 0
                                            : !strcmp(verdict, "fail") ? 1 : 2;
    if (i < 0)
        return;
    merged_t *m = &merged[i];
    if (m->verdict[v]++ == 0 && v != 0 && !(v == 2 && m->verdict[1])) {
        m->fail_rank = rank;
        snprintf(m->detail, sizeof m->detail, "%s", p + off);
    }
}

static int run_launcher(const opts_t *o, int argc, char **argv, int ncases)
{
    char self[PATH_MAX], runbuf[PATH_MAX], nbuf[16], tbuf[16], sbuf[32];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        perror("mox-conformance: /proc/self/exe");
        return 2;
    }
    self[sl] = '\0';
    int N = o->nranks ? o->nranks : 2;
    snprintf(nbuf, sizeof nbuf, "%d", N);
    snprintf(tbuf, sizeof tbuf, "%d", o->timeout);
    snprintf(sbuf, sizeof sbuf, "%llu", (unsigned long long)o->seed);
    const char *av[32];
    int n = 0;
    av[n++] = find_mox_run(o, runbuf, sizeof runbuf);
    av[n++] = "-n";
    av[n++] = nbuf;
    av[n++] = "--timeout";
    av[n++] = tbuf;
    if (o->nodes) {
        av[n++] = "--nodes";
        av[n++] = o->nodes;
    }
    if (o->node_sizes) {
        av[n++] = "--node-sizes";
        av[n++] = o->node_sizes;
    }
    av[n++] = "--";
    av[n++] = self;
    av[n++] = "--rank";
    av[n++] = "--seed";
    av[n++] = sbuf;
    if (o->plugin) {
        av[n++] = "--plugin";
        av[n++] = o->plugin;
    }
    if (o->filter) {
        av[n++] = "--filter";
        av[n++] = o->filter;
    }
    av[n] = NULL;
    (void)argc;
    (void)argv;
    printf("mox-conformance: %d case(s), %d rank(s)%s%s, seed %llu: %s -n %d "
           "...\n", ncases, N, o->nodes ? ", nodes " : "",
           o->nodes ? o->nodes : "", (unsigned long long)o->seed, av[0], N);
    fflush(stdout);

    int fds[2];
    if (pipe(fds) != 0) {
        perror("mox-conformance: pipe");
        return 2;
    }
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execvp(av[0], (char *const *)av);
        fprintf(stderr, "mox-conformance: cannot run %s: %s\n", av[0],
                strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    FILE *in = fdopen(fds[0], "r");
    char line[4096];
    int done = 0;
    while (fgets(line, sizeof line, in))
        take_line(o, line, ncases, &done);
    fclose(in);
    int status = 0;
    waitpid(pid, &status, 0);
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);

    int npass = 0, nfail = 0, nskip = 0;
    for (int i = 0; i < ncases; i++) {
        merged_t *m = &merged[i];
        int seen = m->verdict[0] + m->verdict[1] + m->verdict[2];
        if (m->verdict[1]) {
            printf("FAIL  %-44s rank %d: %s\n", cases[i].name, m->fail_rank,
                   m->detail);
            nfail++;
        } else if (seen < N) {
            printf("FAIL  %-44s %d of %d rank(s) gave no verdict (crashed, "
                   "hung or killed)\n", cases[i].name, N - seen, N);
            nfail++;
        } else if (m->verdict[2] == N) {
            printf("skip  %-44s unsupported: %s\n", cases[i].name, m->detail);
            nskip++;
        } else if (m->verdict[2]) {
            printf("FAIL  %-44s ranks disagree: %d skipped (%s), %d passed\n",
                   cases[i].name, m->verdict[2], m->detail, m->verdict[0]);
            nfail++;
        } else {
            printf("pass  %s\n", cases[i].name);
            npass++;
        }
    }
    printf("%d passed, %d failed, %d skipped\n", npass, nfail, nskip);
    if (done < N && rc == 0)
        rc = 1;
    if (rc != 0 && nfail == 0)
        printf("mox-conformance: the ranks did not all finish (mox-run exit "
               "%d)\n", rc);
    return nfail || rc != 0 ? 1 : 0;
}

static int under_launcher(void)
{
    static const char *vars[] = {"MOX_RANK", "OMPI_COMM_WORLD_RANK",
                                 "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i]))
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    int ncases;
    if (build_cases(o.filter, &ncases) != 0)
        return 2;
    if (o.list) {
        for (int i = 0; i < ncases; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (ncases == 0) {
        fprintf(stderr, "mox-conformance: no case matches --filter '%s'\n",
                o.filter ? o.filter : "");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (o.rank_mode || (!o.nranks && under_launcher()))
        return run_rank(&o, ncases);
    return run_launcher(&o, argc, argv, ncases);
}
