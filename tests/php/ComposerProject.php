<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * A Composer project that `composer require`s this repository's package (composer.json at the
 * root) through a `path` repository, with Debian's composer, offline: Packagist is switched
 * off, and COMPOSER_DISABLE_NETWORK makes any download attempt fail.
 */
final class ComposerProject
{
    public const PACKAGE = 'joinblock/joinblock-polyfill';
    /** What a Composer package needs of this repository: the rest stays out of copies. */
    public const PACKAGE_FILES = ['composer.json', 'README.md', 'docs', 'php'];

    /**
     * Creates the project in `$dir` (which must exist) and requires the package.
     *
     * @param string $packageDir a directory holding the package's composer.json
     * @param bool $symlink link the package into vendor/ (Composer's default for `path`), or copy it
     * @param array<string, mixed> $extra more composer.json keys for the project
     * @return string the output of `composer require`
     */
    public static function create(string $dir, string $packageDir, bool $symlink, array $extra = []): string
    {
        $project = $extra + [
            'name' => 'joinblock-test/project',
            'description' => 'A scratch project of the joinblock tests',
            'type' => 'project',
            'license' => 'MIT',
            'repositories' => [
                ['type' => 'path', 'url' => $packageDir, 'options' => ['symlink' => $symlink]],
                ['packagist.org' => false],
            ],
            'minimum-stability' => 'dev',
            'prefer-stable' => true,
        ];
        file_put_contents("$dir/composer.json", json_encode($project, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES) . "\n");
        return self::run($dir, ['require', '--no-audit', '--no-progress', self::PACKAGE]);
    }

    /**
     * Copies the package's files (not the build tree) to `$dir`, for a copy that other users
     * may read, or that a test may change.
     */
    public static function stagePackage(string $dir): void
    {
        $root = dirname(__DIR__, 2);
        foreach (self::PACKAGE_FILES as $file) {
            exec('cp -R ' . escapeshellarg("$root/$file") . ' ' . escapeshellarg("$dir/"), $out, $exit);
            if ($exit !== 0) {
                throw new \RuntimeException("cannot copy $file to $dir");
            }
        }
    }

    /**
     * Runs composer in `$dir`; throws with its output when it fails.
     *
     * @param list<string> $args
     */
    public static function run(string $dir, array $args): string
    {
        $env = [
            'PATH' => '/usr/local/bin:/usr/bin:/bin',
            'HOME' => $dir,
            'COMPOSER_HOME' => "$dir/.composer-home",
            'COMPOSER_CACHE_DIR' => '/dev/null',
            'COMPOSER_ALLOW_SUPERUSER' => '1',
            'COMPOSER_NO_INTERACTION' => '1',
            'COMPOSER_DISABLE_NETWORK' => '1',
        ];
        // Composer runs on the system's PHP, not the bare one the tests give their children.
        $proc = proc_open(['/usr/bin/composer', ...$args], [0 => ['file', '/dev/null', 'r'], 1 => ['pipe', 'w'], 2 => ['redirect', 1]], $pipes, $dir, $env);
        if (!is_resource($proc)) {
            throw new \RuntimeException('cannot start composer');
        }
        $out = (string) stream_get_contents($pipes[1]);
        fclose($pipes[1]);
        $exit = proc_close($proc);
        if ($exit !== 0) {
            throw new \RuntimeException('composer ' . implode(' ', $args) . " failed ($exit): $out");
        }
        return $out;
    }
}
