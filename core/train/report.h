/* core/train/report.h — the loop's side of lathe_report_scalar. */
#ifndef LATHE_CORE_REPORT_H
#define LATHE_CORE_REPORT_H

#include <stddef.h>

/* The step's reported scalars (mean per name), valid until the next clear. */
size_t lathe_report_take(const char **names, double *values, size_t max);
void lathe_report_clear(void);

#endif
