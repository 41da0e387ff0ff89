/* tests/testutil.h — helpers shared by the Check suites. */
#ifndef LATHE_TESTUTIL_H
#define LATHE_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

/* Run one suite; exit status for automake (0 pass, 1 fail). */
static inline int lathe_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
