<?php
// PHPUnit runs inside a PHP that has the extension loaded (see scripts/test); child processes
// get a bare PHP (`-n`) with only the extension under test, so no php.ini can interfere.

declare(strict_types=1);

if (!extension_loaded('joinblock')) {
    fwrite(STDERR, "joinblock is not loaded: run the tests through scripts/test\n");
    exit(1);
}
if (!getenv('JOINBLOCK_SO') || !is_file(getenv('JOINBLOCK_SO'))) {
    fwrite(STDERR, "JOINBLOCK_SO must name the built extension (scripts/test sets it)\n");
    exit(1);
}

require __DIR__ . '/JoinBlockTestCase.php';
require __DIR__ . '/StandInServer.php';
require __DIR__ . '/FpmServer.php';
require __DIR__ . '/MariaDbServer.php';
