/* Errors as values: a failing call returns -1 and leaves one line of text
 * ("FILE: what is wrong") in a per-thread buffer, so worker threads never
 * race on a shared message and the command layer decides how to print it. */
#ifndef SPARSYNC_ERROR_H
#define SPARSYNC_ERROR_H

#include <stdarg.h>

/* Set the message; always returns -1 so callers can `return sp_err(...)`. */
int sp_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "WHAT: strerror(errno)" using the errno value at call time. */
int sp_err_errno(const char *what);
/* Prefix the current message with "WHO: " unless it already starts so. */
int sp_err_prefix(const char *who);
/* A message about `from` ("FROM: why") now names `to` ("TO: why"): for
 * errors from a file opened under another name (a temporary, a resolved
 * backing path) than the one the user gave. Unchanged when it does not
 * start with FROM. */
int sp_err_rename(const char *from, const char *to);
const char *sp_errmsg(void);
void sp_err_clear(void);

/* Print "sparsync: MSG" on stderr (one line). */
void sp_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* -v: what was decided and why ("sparsync: MSG" on stderr), only when
 * verbose. The level is the process's, like a log level (set once by the
 * command line). */
void sp_set_verbose(int level);
int sp_verbose(void);
void sp_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Who -v lines say they come from ("sparsync serve" on the remote side,
 * whose stderr the client shows beside its own). */
void sp_set_info_name(const char *name);

#endif
