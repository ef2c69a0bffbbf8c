#include "cleanup.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#define SLOTS 8
#define PATHLEN 4096

/* Fixed storage so the signal handler only calls unlink(2), which is
 * async-signal-safe. */
static char paths[SLOTS][PATHLEN];
static volatile sig_atomic_t used[SLOTS];

static void on_signal(int sig)
{
	for (int i = 0; i < SLOTS; i++)
		if (used[i])
			unlink(paths[i]);
	signal(sig, SIG_DFL);
	raise(sig);
}

void cleanup_install_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
	/* A dropped pipe or connection is reported as EPIPE by write(2). */
	signal(SIGPIPE, SIG_IGN);
}

int cleanup_register(const char *path)
{
	if (strlen(path) >= PATHLEN)
		return -1;
	for (int i = 0; i < SLOTS; i++) {
		if (!used[i]) {
			memcpy(paths[i], path, strlen(path) + 1);
			used[i] = 1;
			return i;
		}
	}
	return -1;
}

void cleanup_forget(int slot)
{
	if (slot >= 0 && slot < SLOTS)
		used[slot] = 0;
}
