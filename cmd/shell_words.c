#include "shell_words.h"

#include "../core/error.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Unquoted, these make a shell do something other than pass a literal. */
static bool special(char c)
{
	return strchr("|&;<>()$`*?[]{}#!\\\"'\n\r", c) != NULL;
}

int shell_words(const char *line, char ***argv, int *argc)
{
	size_t len = strlen(line);
	/* At most len/2+1 words, and the text never grows. */
	size_t nmax = len / 2 + 2;
	char **v = malloc(nmax * sizeof *v + len + 1);
	if (!v)
		return sp_err("out of memory");
	char *out = (char *)(v + nmax);
	int n = 0;
	const char *p = line;
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (!*p)
			break;
		v[n++] = out;
		while (*p && *p != ' ' && *p != '\t') {
			if (*p == '\'') {
				const char *end = strchr(p + 1, '\'');
				if (!end)
					goto unbalanced;
				memcpy(out, p + 1, (size_t)(end - p - 1));
				out += end - p - 1;
				p = end + 1;
			} else if (*p == '"') {
				for (p++; *p != '"'; p++) {
					if (!*p)
						goto unbalanced;
					if (*p == '$' || *p == '`')
						goto refused;
					if (*p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$' ||
							   p[1] == '`'))
						p++;
					*out++ = *p;
				}
				p++;
			} else if (*p == '\\') {
				if (!p[1] || p[1] == '\n')
					goto refused;
				*out++ = p[1];
				p += 2;
			} else if (special(*p)) {
				goto refused;
			} else {
				*out++ = *p++;
			}
		}
		*out++ = 0;
	}
	v[n] = NULL;
	*argv = v;
	*argc = n;
	return 0;
unbalanced:
	free(v);
	return sp_err("unbalanced quotes in the command");
refused:
	free(v);
	if (*p == '\n' || *p == '\r')
		return sp_err("the command spans lines, which only a shell would run");
	return sp_err("the command needs a shell (it holds '%c'), which a restricted serve never "
		      "runs", *p);
}
