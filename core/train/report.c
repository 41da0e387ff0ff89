/* core/train/report.c — scalars that components report during a step
 * (lathe_report_scalar), gathered for the loop to log with the step. */
#include <stdlib.h>
#include <string.h>

#include <lathe/logger.h>
#include <lathe/status.h>

#include "train/report.h"

#define REPORT_MAX 64

static struct {
    char name[64];
    double sum;
    int64_t count;
} items[REPORT_MAX];
static size_t nitems;

int lathe_report_scalar(const char *name, double value)
{
    if (!name || !name[0])
        return lathe_error(LATHE_EINVAL, "lathe_report_scalar: no name");
    for (size_t i = 0; i < nitems; i++)
        if (strcmp(items[i].name, name) == 0) {
            items[i].sum += value;
            items[i].count++;
            return LATHE_OK;
        }
    if (nitems == REPORT_MAX)
        return lathe_error(LATHE_EINVAL, "lathe_report_scalar: more than %d names in one step", REPORT_MAX);
    if (strlen(name) >= sizeof items[0].name)
        return lathe_error(LATHE_EINVAL, "lathe_report_scalar: name '%s' is too long", name);
    strcpy(items[nitems].name, name);
    items[nitems].sum = value;
    items[nitems].count = 1;
    nitems++;
    return LATHE_OK;
}

size_t lathe_report_take(const char **names, double *values, size_t max)
{
    size_t n = nitems < max ? nitems : max;
    for (size_t i = 0; i < n; i++) {
        names[i] = items[i].name;
        values[i] = items[i].sum / (double)items[i].count;
    }
    return n;
}

void lathe_report_clear(void) { nitems = 0; }
