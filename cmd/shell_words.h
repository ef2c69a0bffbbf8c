/* A command line split into words as a POSIX shell would split a simple
 * command, for the restricted serve, which must know what a forced
 * command's client asked for (SSH_ORIGINAL_COMMAND) without a shell.
 * Quotes ('...', "...") and backslashes are understood; anything that
 * would make a shell do more than run one command with literal arguments
 * (; | & < > ( ) $ ` globs, braces, comments, newlines) is refused, never
 * interpreted. */
#ifndef SPARSYNC_SHELL_WORDS_H
#define SPARSYNC_SHELL_WORDS_H

/* *argv: malloc'd, NULL-terminated, the words in one allocation with it
 * (free(*argv) frees all). -1 with the reason in sp_errmsg(). */
int shell_words(const char *line, char ***argv, int *argc);

#endif
