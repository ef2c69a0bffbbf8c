#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char errbuf[1024];

int sp_err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(errbuf, sizeof errbuf, fmt, ap);
	va_end(ap);
	return -1;
}

int sp_err_errno(const char *what)
{
	int e = errno;
	return sp_err("%s: %s", what, strerror(e));
}

int sp_err_rename(const char *from, const char *to)
{
	size_t n = strlen(from);
	if (strncmp(errbuf, from, n) != 0 || errbuf[n] != ':')
		return -1;
	char tmp[sizeof errbuf];
	snprintf(tmp, sizeof tmp, "%s%s", to, errbuf + n);
	memcpy(errbuf, tmp, sizeof errbuf);
	return -1;
}

int sp_err_prefix(const char *who)
{
	size_t n = strlen(who);
	if (strncmp(errbuf, who, n) == 0 && errbuf[n] == ':')
		return -1;
	char tmp[sizeof errbuf];
	memcpy(tmp, errbuf, sizeof tmp);
	int w = snprintf(errbuf, sizeof errbuf, "%s: ", who);
	if (w > 0 && (size_t)w < sizeof errbuf)
		memcpy(errbuf + w, tmp, sizeof errbuf - (size_t)w - 1);
	errbuf[sizeof errbuf - 1] = '\0';
	return -1;
}

const char *sp_errmsg(void)
{
	return errbuf[0] ? errbuf : "unknown error";
}

void sp_err_clear(void)
{
	errbuf[0] = '\0';
}

/* "sparsync: MSG" on stderr. */
static void vline(const char *fmt, va_list ap)
{
	char line[1024];
	vsnprintf(line, sizeof line, fmt, ap);
	fprintf(stderr, "sparsync: %s\n", line);
}

void sp_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vline(fmt, ap);
	va_end(ap);
}

static int verbose_level;
static const char *info_name = "sparsync";

void sp_set_info_name(const char *name)
{
	info_name = name;
}

void sp_set_verbose(int level)
{
	verbose_level = level;
}

int sp_verbose(void)
{
	return verbose_level;
}

void sp_info(const char *fmt, ...)
{
	if (!verbose_level)
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: %s\n", info_name, line);
}
