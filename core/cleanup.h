/* Temporary files to remove if the process is interrupted (SIGINT, SIGTERM,
 * SIGHUP, SIGPIPE) so that a cancelled copy leaves nothing behind. */
#ifndef SPARSYNC_CLEANUP_H
#define SPARSYNC_CLEANUP_H

void cleanup_install_signals(void);
/* Remember path (copied); returns a slot id or -1 when full. */
int cleanup_register(const char *path);
void cleanup_forget(int slot);

#endif
