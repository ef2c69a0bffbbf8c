/* Unit tests for the rendezvous of several connections (core/links.c):
 * a real abstract socket, real `serve --join` code in a child process
 * handing over real pipes. A join with the session's token is taken; a
 * wrong token, a link index used twice and a session that stopped taking
 * links are refused, and the owner never hears of them. */
#include "unit.h"

#include "../../core/error.h"
#include "../../core/links.h"
#include "../../core/protocol.h"
#include "../../transport/transport.h"

#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned added[PROTO_LINKS_MAX];
static unsigned nadded;

static int count_add(void *owner, struct link *l)
{
	(void)owner;
	added[nadded++] = l->index;
	return 0;
}

/* Run `serve --join name` in a child over two pipes; as its client, say
 * hello and JOIN {token, index}. Returns the first byte serve answered
 * with ('S' of its hello's magic, 5 for an ERROR record, -1 for nothing),
 * and the child's exit status once serve let it go (after links_free). */
struct joiner {
	pid_t pid;
	int to, from;
};

static int join(const char *name, const uint8_t *token, unsigned index, struct joiner *j)
{
	int in[2], out[2];
	if (pipe(in) < 0 || pipe(out) < 0)
		return -1;
	j->pid = fork();
	if (j->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[0]); close(in[1]); close(out[0]); close(out[1]);
		_exit(links_join_run(name) == 0 ? 0 : 1);
	}
	close(in[0]);
	close(out[1]);
	j->to = in[1];
	j->from = out[0];
	struct proto_hello h;
	proto_hello_init(&h, ROLE_SENDER, 0, 1 << 20, CAP_SUPPORTED);
	uint8_t b[PROTO_HELLO_SIZE + PROTO_FRAME_SIZE + PROTO_JOIN_SIZE];
	proto_hello_encode(&h, b);
	struct proto_join pj = { .index = index };
	memcpy(pj.token, token, PROTO_LINK_TOKEN_SIZE);
	size_t n = PROTO_HELLO_SIZE + proto_encode_join(b + PROTO_HELLO_SIZE, &pj);
	if (write(j->to, b, n) != (ssize_t)n)
		return -1;
	uint8_t first;
	return read(j->from, &first, 1) == 1 ? first : -1;
}

static int finish(struct joiner *j)
{
	close(j->to);
	close(j->from);
	int st;
	if (waitpid(j->pid, &st, 0) != j->pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* How many further connections: asked for, or from both ends' cores and
 * the data (these hold whatever this machine's core count). */
static void test_want(void)
{
	CHECK("--connections 3: two further links", links_want(3, 1, 0) == 2);
	CHECK("--connections 1: none", links_want(1, 64, UINT64_MAX) == 0);
	CHECK("default, a 1-core remote: none", links_want(0, 1, UINT64_MAX) == 0);
	CHECK("default, a 3-core remote: none", links_want(0, 3, UINT64_MAX) == 0);
	CHECK("default, little data: none", links_want(0, 64, 100ull << 20) == 0);
	unsigned big = links_want(0, 64, UINT64_MAX);
	CHECK("default, 64-core remote: half the smaller core count, at most 4 in all",
	      big == (links_cores() < 4 ? 0 : (links_cores() / 2 > 4 ? 4 : links_cores() / 2) - 1));
	CHECK("default, 1.5 GiB: at most one further link", links_want(0, 64, 3ull << 29) <= 1);
	CHECK("a client asks serve for links when told to", links_worth_asking(2));
	CHECK("--connections 1 asks for none", !links_worth_asking(1));
	CHECK("the default asks on 4 cores or more", links_worth_asking(0) == (links_cores() >= 4));
}

int main(void)
{
	test_want();
	struct links L;
	memset(&L, 0, sizeof L);
	CHECK("a rendezvous opens", links_host_open(&L) == 0);
	CHECK("its name is one serve --join takes", proto_link_name_ok(L.offer.name));
	CHECK("it reports the cores", L.offer.cores >= 1);
	proto_hello_init(&L.mine, ROLE_RECEIVER, 0, 32 << 20, CAP_SUPPORTED);
	L.me = ROLE_RECEIVER;
	L.peer = "test";
	L.add = count_add;
	CHECK("it takes links", links_host_start(&L) == 0);

	struct joiner a, b, c, d;
	CHECK("a join with the token is answered with serve's hello",
	      join(L.offer.name, L.offer.token, 1, &a) == 'S');
	CHECK("  and the owner has link 1", nadded == 1 && added[0] == 1);

	uint8_t wrong[PROTO_LINK_TOKEN_SIZE];
	memcpy(wrong, L.offer.token, sizeof wrong);
	wrong[7] ^= 0x40;
	CHECK("a join with a wrong token is answered with an ERROR record",
	      join(L.offer.name, wrong, 2, &b) == REC_ERROR);
	CHECK("  and the owner never hears of it", nadded == 1);
	CHECK("  its join process is let go at once", finish(&b) == 0);

	CHECK("link 1 joining twice is refused", join(L.offer.name, L.offer.token, 1, &c) == REC_ERROR);
	CHECK("  the owner still has one link", nadded == 1);
	finish(&c);

	links_stop(&L);
	d.pid = -1;
	int r = join(L.offer.name, L.offer.token, 2, &d);
	CHECK("after links_stop a join gets nothing", r == -1);
	CHECK("  and its join process fails (the session is gone)", finish(&d) == 1);
	CHECK("  the owner still has one link", nadded == 1);

	char bad[] = "sparsync-links-0123";
	CHECK("serve --join refuses a name that is not a rendezvous", links_join_run(bad) < 0);
	sp_err_clear();

	links_free(&L);
	CHECK("links_free lets the joined process go", finish(&a) == 0);
	UNIT_DONE();
}
