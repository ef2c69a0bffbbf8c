/* Unit tests for cmd/shell_words.c: the restricted serve splits the
 * client's command (SSH_ORIGINAL_COMMAND) as sh would, for the forms
 * sparsync's client writes, and refuses anything a shell would do more
 * with. */
#include "unit.h"

#include "../../cmd/shell_words.h"

#include <stdarg.h>
#include <string.h>

/* line splits into exactly the NULL-terminated words given. */
static bool splits(const char *line, ...)
{
	char **w;
	int n;
	if (shell_words(line, &w, &n) < 0)
		return false;
	va_list ap;
	va_start(ap, line);
	bool ok = true;
	int i = 0;
	for (const char *want; (want = va_arg(ap, const char *)); i++)
		ok = ok && i < n && strcmp(w[i], want) == 0;
	va_end(ap);
	ok = ok && i == n && w[n] == NULL;
	free(w);
	return ok;
}

static bool refused(const char *line)
{
	char **w;
	int n;
	if (shell_words(line, &w, &n) == 0) {
		free(w);
		return false;
	}
	return true;
}

int main(void)
{
	CHECK("plain words", splits("sparsync serve --receive x", "sparsync", "serve", "--receive",
				    "x", NULL));
	CHECK("runs of blanks and tabs", splits("  a \t b  ", "a", "b", NULL));
	CHECK("empty line: no words", splits("", NULL));
	CHECK("single quotes keep blanks", splits("--receive '/srv/my vm.qcow2'", "--receive",
						  "/srv/my vm.qcow2", NULL));
	CHECK("the client's quote of a quote: 'it'\\''s'", splits("'it'\\''s'", "it's", NULL));
	CHECK("metacharacters inside single quotes are literal",
	      splits("'a;b|c$(d)`e`*?[x]{y}#!'", "a;b|c$(d)`e`*?[x]{y}#!", NULL));
	CHECK("~ left bare, the rest quoted", splits("--receive ~/'vm.raw'", "--receive", "~/vm.raw",
						      NULL));
	CHECK("an empty quoted word", splits("a '' b", "a", "", "b", NULL));
	CHECK("double quotes with escapes", splits("\"a \\\"b\\\" \\\\c\"", "a \"b\" \\c", NULL));
	CHECK("backslash outside quotes", splits("a\\ b", "a b", NULL));
	CHECK("a word of many quoted parts", splits("x'y'\"z\"w", "xyzw", NULL));
	CHECK("';' refused", refused("sparsync serve --receive x; id"));
	CHECK("'&&' refused", refused("sparsync serve && id"));
	CHECK("'|' refused", refused("sparsync serve | id"));
	CHECK("redirection refused", refused("sparsync serve >/etc/x"));
	CHECK("$() refused", refused("sparsync serve --receive $(id)"));
	CHECK("$VAR refused", refused("sparsync serve --receive $HOME/x"));
	CHECK("backquotes refused", refused("sparsync serve `id`"));
	CHECK("$ inside double quotes refused", refused("\"$(id)\""));
	CHECK("a glob refused", refused("sparsync serve --receive *.raw"));
	CHECK("braces refused", refused("a{b,c}"));
	CHECK("a comment refused", refused("sparsync serve # x"));
	CHECK("a newline refused", refused("sparsync serve\nid"));
	CHECK("a trailing backslash refused", refused("a\\"));
	CHECK("unbalanced single quote refused", refused("'abc"));
	CHECK("unbalanced double quote refused", refused("\"abc"));
	UNIT_DONE();
}
