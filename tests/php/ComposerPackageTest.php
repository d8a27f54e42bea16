<?php

declare(strict_types=1);

namespace JoinBlock\Tests;

/**
 * The Composer package (composer.json at the root): valid, installable offline through a
 * `path` repository, and loading the polyfill the way symfony/polyfill-* packages do, which
 * defines nothing when the extension is loaded. (The polyfill run of the suite loads it the
 * same way: bootstrap.php.)
 */
final class ComposerPackageTest extends JoinBlockTestCase
{
    public static function setUpBeforeClass(): void
    {
        if (self::implementation() === 'polyfill') {
            self::markTestSkipped('tests the package with and without the extension itself: runs in the extension run');
        }
        if (!is_executable('/usr/bin/composer')) {
            self::markTestSkipped('Debian\'s composer is missing (scripts/test installs it)');
        }
    }

    public function testTheManifestIsValidAndDeclaresWhatThePolyfillNeeds(): void
    {
        $package = $this->scratchDir(0755);
        ComposerProject::stagePackage($package);
        $validate = ComposerProject::run($package, ['validate', '--strict', '--no-check-lock']);
        $this->assertStringContainsString('./composer.json is valid', $validate);

        $manifest = json_decode((string) file_get_contents(dirname(__DIR__, 2) . '/composer.json'), true, 16, JSON_THROW_ON_ERROR);
        $this->assertSame(ComposerProject::PACKAGE, $manifest['name']);
        $this->assertSame('library', $manifest['type'], 'a library: Composer refuses to install a php-ext (PIE) package as one');
        $this->assertSame(['php' => '>=8.2 <8.7'], $manifest['require']);
        $this->assertSame(['ext-joinblock', 'ext-curl', 'ext-mysqli', 'ext-mbstring'], array_keys($manifest['suggest']));
        $this->assertSame(['php/joinblock.php', 'php/site-health.php'], $manifest['autoload']['files']);
        foreach ($manifest['autoload']['files'] as $file) {
            $this->assertFileExists("$package/$file", 'the package files include what autoload names');
        }
    }

    public function testAProjectRequiresItOfflineAndItsAutoloaderLoadsThePolyfill(): void
    {
        $package = $this->scratchDir(0755);
        ComposerProject::stagePackage($package);
        $project = $this->scratchDir(0755);
        $out = ComposerProject::create($project, $package, false);
        $this->assertMatchesRegularExpression('~Installing ' . preg_quote(ComposerProject::PACKAGE, '~') . ' \(.*\): Mirroring from~', $out);
        $autoload = "$project/vendor/autoload.php";
        $code = 'require $argv[1]; $f = new ReflectionFunction("joinblock_acquire_lock"); echo json_encode(['
            . '"internal" => $f->isInternal(), "status" => joinblock_status()["implementation"],'
            . '"polyfill_classes" => class_exists("JoinBlock\Polyfill\Locking", false), "site_health" => class_exists("JoinBlock\WordPress\SiteHealth", false),'
            . '"lock" => basename(joinblock_acquire_lock("composer@example.org", ["dir" => $argv[2]])->path())]);';
        $lock = 'join-lock-' . sha1('composer@example.org');
        $dir = $this->scratchDir();

        // A PHP without the extension: the polyfill defines the API.
        $bare = json_decode(self::runPhpOk([PHP_BINARY, '-n', '-r', $code, $autoload, $dir]), true);
        $this->assertSame(['internal' => false, 'status' => 'polyfill', 'polyfill_classes' => true, 'site_health' => false, 'lock' => $lock], $bare);

        // With the extension loaded, the package defines nothing of the API: the extension's stays.
        $native = json_decode(self::runPhpOk([PHP_BINARY, '-n', '-d', 'extension=' . getenv('JOINBLOCK_SO'), '-r', $code, $autoload, $dir]), true);
        $this->assertSame(['internal' => true, 'status' => 'extension', 'polyfill_classes' => false, 'site_health' => false, 'lock' => $lock], $native);
    }
}
