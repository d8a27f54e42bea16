<?php
// Runs a command with a private MariaDB on 127.0.0.1 (tests/php/MariaDbServer.php), its URL in
// env JOINBLOCK_MYSQL_URL; stops the server after. Exits with the command's status.
//
//   php -n -d extension=posix bench/with_mariadb.php <command> [<args>...]

declare(strict_types=1);

require dirname(__DIR__) . '/tests/php/MariaDbServer.php';

use JoinBlock\Tests\MariaDbServer;

$dir = sys_get_temp_dir() . '/joinblock-bench-mariadb-' . bin2hex(random_bytes(4));
mkdir($dir, 0700);
$server = MariaDbServer::start($dir);
try {
    putenv('JOINBLOCK_MYSQL_URL=' . $server->url());
    $command = implode(' ', array_map('escapeshellarg', array_slice($argv, 1)));
    passthru($command, $status);
} finally {
    $server->stop();
    exec('rm -rf ' . escapeshellarg($dir));
}
exit($status);
