<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/** Stopping the servers the tests start, without ever waiting on one for good. */
final class ChildProcess
{
    /**
     * Sends `$signal`, gives the process `$grace` seconds to end, then kills it, and reaps it.
     * A plain proc_close() after the signal waited 13 minutes once: a stand-in server under
     * two CPU burners never acted on its SIGTERM (issue 31), and the suite hung with it.
     *
     * @param resource $process from proc_open()
     */
    public static function stop($process, int $signal = SIGTERM, float $grace = 10.0): void
    {
        proc_terminate($process, $signal);
        $deadline = microtime(true) + $grace;
        while (proc_get_status($process)['running'] && microtime(true) < $deadline) {
            usleep(20000);
        }
        if (proc_get_status($process)['running']) {
            proc_terminate($process, SIGKILL);
        }
        proc_close($process);
    }
}
