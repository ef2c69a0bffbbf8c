#ifndef SPARSYNC_CMD_H
#define SPARSYNC_CMD_H

#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define SPARSYNC_VERSION "0.1.0"

int cmd_map(int argc, char **argv);
int cmd_copy(int argc, char **argv);
int cmd_shrink(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_recover(int argc, char **argv);

/* "sparsync CMD: MSG" + hint to --help; returns EXIT_USAGE. */
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Print sp_errmsg() as "sparsync: MSG"; returns EXIT_FAIL. */
int fail(void);

#endif
