<?php
// PHPUnit runs inside a PHP that has the implementation under test (see scripts/test): the
// extension, or with JOINBLOCK_IMPL=polyfill php/joinblock.php instead, loaded by Composer.
// Child processes get a bare PHP (`-n`) with only that implementation, so no php.ini can
// interfere.

declare(strict_types=1);

$implementation = getenv('JOINBLOCK_IMPL') ?: 'extension';
if ($implementation === 'polyfill') {
    if (extension_loaded('joinblock')) {
        fwrite(STDERR, "JOINBLOCK_IMPL=polyfill: run PHPUnit without the extension loaded\n");
        exit(1);
    }
    // As a site gets it: `composer require` of the package through a path repository (a
    // symlink to this checkout), then Composer's autoloader; child processes prepend the same.
    require __DIR__ . '/ComposerProject.php';
    $project = sys_get_temp_dir() . '/joinblock-composer-' . bin2hex(random_bytes(4));
    mkdir($project, 0755);
    register_shutdown_function(static fn () => exec('rm -rf ' . escapeshellarg($project)));
    try {
        JoinBlock\Tests\ComposerProject::create($project, dirname(__DIR__, 2), true);
    } catch (RuntimeException $e) {
        fwrite(STDERR, $e->getMessage() . "\n");
        exit(1);
    }
    define('JOINBLOCK_POLYFILL_AUTOLOAD', "$project/vendor/autoload.php");
    require JOINBLOCK_POLYFILL_AUTOLOAD;
} elseif ($implementation !== 'extension') {
    fwrite(STDERR, "JOINBLOCK_IMPL must be extension (the default) or polyfill\n");
    exit(1);
} elseif (!extension_loaded('joinblock')) {
    fwrite(STDERR, "joinblock is not loaded: run the tests through scripts/test\n");
    exit(1);
}
// The extension run needs it; the polyfill run too, for the tests that mix both.
if (!getenv('JOINBLOCK_SO') || !is_file(getenv('JOINBLOCK_SO'))) {
    fwrite(STDERR, "JOINBLOCK_SO must name the built extension (scripts/test sets it)\n");
    exit(1);
}

require __DIR__ . '/JoinBlockTestCase.php';
require_once __DIR__ . '/ChildProcess.php';
require __DIR__ . '/StandInServer.php';
require __DIR__ . '/FpmServer.php';
require __DIR__ . '/ApacheServer.php';
require __DIR__ . '/MariaDbServer.php';
require __DIR__ . '/MessageSources.php';
require_once __DIR__ . '/ComposerProject.php';
require __DIR__ . '/WordPressSite.php';
require __DIR__ . '/HeadlessChromium.php';
