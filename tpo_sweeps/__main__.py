from tpo_sweeps.run import main

if __name__ == "__main__":
    main()
